"""Relabel runs on a real store (SQLite and PostgreSQL): provenance, budgets, resumption."""

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from chat_endpoint import ChatHandler
from kizuna.datasets.content import ContentCheck
from kizuna.datasets.relabel import Checks, RelabelConfig, relabel
from kizuna.personas import load_profiles
from kizuna.store import labelling, runs
from kizuna.store.datasets import dataset_rows, get_dataset
from kizuna.store.db import open_store, transaction
from kizuna.store.interactions import InteractionRecord, log_interaction
from kizuna.store.models import Dataset, Interaction, PickOutcome, RunKind, RunPhase
from kizuna.teacher.base import StyleRequest, TeacherUnavailableError
from kizuna.teacher.rules import RulesTeacher

pytestmark = pytest.mark.integration
PROFILES = load_profiles()
TOPICS = [
    "The meeting has been moved to Thursday",
    "Your package will arrive tomorrow morning",
    "Remember to water the plants tonight",
    "The library closes at nine in the evening",
    "The new phone needs a software update",
    "Dinner is ready in twenty minutes",
]


@pytest.fixture(scope="module")
def checks() -> Checks:
    # No judge: these tests are about the run's bookkeeping, with the rules teacher.
    return Checks(ContentCheck())


def _traffic(sessions: sessionmaker[Session]) -> None:
    with transaction(sessions) as session:
        for n in range(36):
            persona = "tsundere" if n % 3 else "cool"
            text = f"{TOPICS[n % len(TOPICS)]}, item {n}. Mail me at user{n}@example.com."
            log_interaction(
                session,
                record=InteractionRecord(
                    public_id=f"int-{n}",
                    request_text=text,
                    output_text="...",
                    strength=0.6,
                    adapter_versions={persona: 1},
                    token_entropies=[0.1 * (n % 7), 0.2 * (n % 5)],
                    latency_ms=10.0,
                    persona=persona,
                    consent=n % 6 != 5,
                ),
            )


class FlakyTeacher:
    """The rules teacher behind an endpoint that goes down after ``answers`` batches."""

    name = "rules"
    version = "rules-1"

    def __init__(self, answers: int) -> None:
        self._answers = answers
        self._inner = RulesTeacher()

    def relabel(self, requests: Sequence[StyleRequest]) -> list[str]:
        if self._answers == 0:
            raise TeacherUnavailableError("teacher endpoint http://teacher/v1 is down")
        self._answers -= 1
        return self._inner.relabel(requests)


def test_a_run_writes_a_traceable_dataset_version(
    sessions: sessionmaker[Session], tmp_path: Path, checks: Checks
) -> None:
    _traffic(sessions)
    config = RelabelConfig(budget=5, teacher="rules", persona="tsundere")

    def run_once():
        return relabel(
            sessions,
            config,
            teacher=RulesTeacher(),
            profiles=PROFILES,
            export_dir=tmp_path,
            checks=checks,
        )

    result = run_once()
    assert (result.picked, result.dataset_version, result.resumed) == (5, 1, False)
    with sessions() as session:
        dataset = get_dataset(session, name="relabel-tsundere")
        rows = dataset_rows(session, dataset_id=dataset.id)
        assert len(rows) == dataset.row_count == result.report.kept > 0
        for row in rows:
            source = session.get_one(Interaction, row.source_interaction_id)
            assert source.persona == "tsundere" and source.consent
            assert "@" not in row.input and "[EMAIL]" in row.input
            assert row.input.split(", item")[0] in row.target
        assert dataset.provenance["teacher"] == {"name": "rules", "version": "rules-1"}
        assert dataset.provenance["sampler"]["per_persona_budget"] == 5
        assert sorted(dataset.provenance["source_interaction_ids"]) == sorted(
            row.source_interaction_id for row in rows
        )
        picks = labelling.picks_of(session, run_id=result.run_id)
        assert [pick.rank for pick in picks] == [1, 2, 3, 4, 5]
        assert all(pick.reason.startswith("mean_entropy") for pick in picks)
        assert {pick.outcome for pick in picks} <= {PickOutcome.KEPT, PickOutcome.DROPPED}
        (run,) = runs.list_runs(session, kind=RunKind.RELABEL)
        assert run.phase == RunPhase.SUCCEEDED and run.metrics["dataset_version"] == 1
    exported = [json.loads(line) for line in result.export_path.read_text().splitlines()]
    assert [line["input"] for line in exported] == [row.input for row in rows]
    assert exported[0]["metadata"]["personality"] == "tsundere"

    # The next run with the same settings labels new interactions only.
    again = run_once()
    assert again.dataset_version == 2 and again.run_id != result.run_id
    with sessions() as session:
        first = {p.interaction_id for p in labelling.picks_of(session, run_id=result.run_id)}
        second = {p.interaction_id for p in labelling.picks_of(session, run_id=again.run_id)}
    assert len(second) == 5 and not first & second


def test_an_interrupted_run_resumes_without_losing_or_repeating_anything(
    sessions: sessionmaker[Session], tmp_path: Path, checks: Checks
) -> None:
    _traffic(sessions)
    config = RelabelConfig(budget=20, teacher="rules")
    kwargs = dict(profiles=PROFILES, export_dir=tmp_path, checks=checks)
    with pytest.raises(TeacherUnavailableError):
        relabel(sessions, config, teacher=FlakyTeacher(answers=1), **kwargs)
    with sessions() as session:
        (run,) = runs.list_runs(session, kind=RunKind.RELABEL)
        assert run.phase == RunPhase.RUNNING and "interrupted after 8/20" in run.message
        assert len(labelling.picks_of(session, run_id=run.id, outcome=PickOutcome.LABELLED)) == 8
        assert len(labelling.picks_of(session, run_id=run.id, outcome=PickOutcome.PENDING)) == 12
        assert session.query(Dataset).count() == 0

    progress: list[tuple[int, int]] = []
    result = relabel(
        sessions,
        config,
        teacher=FlakyTeacher(answers=99),
        on_progress=lambda *p: progress.append(p),
        **kwargs,
    )
    assert result.resumed and result.run_id == run.id and result.picked == 20
    assert progress[0] == (8, 20) and progress[-1] == (20, 20)
    with sessions() as session:
        (dataset,) = session.query(Dataset).all()
        rows = dataset_rows(session, dataset_id=dataset.id)
        sources = [row.source_interaction_id for row in rows]
        assert len(sources) == len(set(sources))
        picks = labelling.picks_of(session, run_id=run.id)
        assert len(picks) == 20 and all(p.target for p in picks)
        kept = {p.interaction_id for p in picks if p.outcome == PickOutcome.KEPT}
        assert kept == set(sources)
        assert result.report.kept + sum(result.report.dropped.values()) == 20
        # 36 interactions, 6 without consent: the budget of 20 came from the other 30.
        assert all(session.get_one(Interaction, p.interaction_id).consent for p in picks)


class _SlowTeacherEndpoint(ChatHandler):
    """An OpenAI-compatible endpoint answering in a tsundere voice, 50 ms per call."""

    calls = 0

    def answer(self, body: dict) -> tuple[int, str | None]:
        type(self).calls += 1
        time.sleep(0.05)
        text = body["messages"][-1]["content"].split("\n", 1)[1]
        # In the voice, not stock phrases glued on: `kizuna relabel` keeps only what the
        # persona judge finds in the persona (the cool rows may be dropped as off style).
        return 200, f"{text} I-it's not like I did it for you, idiot! I just happened to be free."


def test_kill_9_mid_run_then_the_same_command_resumes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    sessions = open_store(f"sqlite:///{data / 'kizuna.db'}")
    _traffic(sessions)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SlowTeacherEndpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {
        **os.environ,
        "KIZUNA_DATA_DIR": str(data),
        "KIZUNA_TEACHER_URL": f"http://127.0.0.1:{server.server_address[1]}/v1",
        "KIZUNA_TEACHER_MODEL": "teacher",
        "KIZUNA_TEACHER_REQUESTS_PER_S": "10",
    }
    command = [sys.executable, "-m", "kizuna", "relabel", "--budget", "24", "--teacher", "openai"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        labelled = 0
        while labelled < 8 and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.1)
            with sessions() as session:
                (run,) = runs.list_runs(session, kind=RunKind.RELABEL) or (None,)
                if run is not None:
                    labelled = len(
                        labelling.picks_of(session, run_id=run.id, outcome=PickOutcome.LABELLED)
                    )
        assert 8 <= labelled < 24, f"killed too late or never started ({labelled} labelled)"
        process.kill()  # SIGKILL: no chance to clean up
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    calls_before = _SlowTeacherEndpoint.calls
    resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    server.shutdown()
    assert resumed.returncode == 0, resumed.stderr
    assert "(resumed)" in resumed.stdout and "relabel-all v1" in resumed.stdout
    with sessions() as session:
        (run,) = runs.list_runs(session, kind=RunKind.RELABEL)
        assert run.phase == RunPhase.SUCCEEDED
        picks = labelling.picks_of(session, run_id=run.id)
        assert len(picks) == 24 and all(p.target for p in picks)
        (dataset,) = session.query(Dataset).all()
        sources = [
            row.source_interaction_id for row in dataset_rows(session, dataset_id=dataset.id)
        ]
        assert len(sources) == len(set(sources)) == dataset.row_count > 0
    # Only what was still pending (plus at most the one batch in flight) was asked again.
    assert _SlowTeacherEndpoint.calls - calls_before <= 24 - labelled + 8
