"""Relabel runs on a real store (SQLite and PostgreSQL): provenance, budgets, resumption."""

import json
from collections.abc import Sequence
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from kizuna.datasets.relabel import RelabelConfig, relabel
from kizuna.datasets.similarity import ContentSimilarity
from kizuna.personas import load_profiles
from kizuna.store import labelling, runs
from kizuna.store.datasets import dataset_rows, get_dataset
from kizuna.store.db import transaction
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
def similarity() -> ContentSimilarity:
    return ContentSimilarity()


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
    sessions: sessionmaker[Session], tmp_path: Path, similarity: ContentSimilarity
) -> None:
    _traffic(sessions)
    config = RelabelConfig(budget=5, teacher="rules", persona="tsundere")
    result = relabel(
        sessions,
        config,
        teacher=RulesTeacher(),
        profiles=PROFILES,
        export_dir=tmp_path,
        similarity=similarity,
    )
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
    again = relabel(
        sessions,
        config,
        teacher=RulesTeacher(),
        profiles=PROFILES,
        export_dir=tmp_path,
        similarity=similarity,
    )
    assert again.dataset_version == 2 and again.run_id != result.run_id
    with sessions() as session:
        first = {p.interaction_id for p in labelling.picks_of(session, run_id=result.run_id)}
        second = {p.interaction_id for p in labelling.picks_of(session, run_id=again.run_id)}
    assert len(second) == 5 and not first & second


def test_an_interrupted_run_resumes_without_losing_or_repeating_anything(
    sessions: sessionmaker[Session], tmp_path: Path, similarity: ContentSimilarity
) -> None:
    _traffic(sessions)
    config = RelabelConfig(budget=20, teacher="rules")
    kwargs = dict(profiles=PROFILES, export_dir=tmp_path, similarity=similarity)
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
