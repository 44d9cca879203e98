"""Serve → simulated traffic → `kizuna relabel` with the rules, prompted and openai teachers.

The API runs as a real HTTP server on loopback (one replica's app under uvicorn: the
same engine, store and journal as under Ray Serve); `kizuna relabel` runs as a separate
process, as a user runs it. The openai teacher is pointed at this same server's
``/v1/chat/completions``, asking each persona's adapter to teach.
"""

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from cli_runner import kizuna

from kizuna.bootstrap import bootstrap
from kizuna.config import Settings
from kizuna.model.finetune import FinetuneArgs
from kizuna.serve.runtime import Replica
from kizuna.store import labelling
from kizuna.store.datasets import dataset_rows, get_dataset
from kizuna.store.models import Interaction, PickOutcome
from support import QuietProgress, free_port, in_process_replica

pytestmark = pytest.mark.integration
TOKEN = "relabel-token"
TEXTS = [
    "The meeting has been moved to Thursday.",
    "Your package will arrive tomorrow morning.",
    "Remember to water the plants tonight.",
    "The library closes at nine in the evening.",
    "Dinner is ready in twenty minutes.",
    "会议改到星期四了。",
    "火车早上八点出发。",
    "记得多喝水。",
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[dict]:
    data = tmp_path_factory.mktemp("relabel-data")
    settings = Settings(
        data_dir=data,
        base_model=str(tiny_model_dir),
        device="cpu",
        api_tokens=TOKEN,
        serve_cache_size=0,
    )
    bootstrap(
        settings,
        progress=QuietProgress(),
        args=FinetuneArgs(steps=2, batch_size=4),
        personas=["tsundere"],
    )
    replica = in_process_replica(settings)
    port = free_port()
    http = uvicorn.Server(
        uvicorn.Config(replica.app, host="127.0.0.1", port=port, log_level="warning", ws="none")
    )
    thread = threading.Thread(target=http.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not http.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert http.started, "the API did not start"
    yield {
        "url": f"http://127.0.0.1:{port}",
        "data": data,
        "replica": replica,
        "model": tiny_model_dir,
    }
    http.should_exit = True
    thread.join(timeout=10)
    replica.close()


def _send_traffic(url: str) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
        for n in range(24):
            body = {
                "text": f"{TEXTS[n % len(TEXTS)]} ({n})",
                "persona": "tsundere",
                "strength": 0.6,
                "max_new_tokens": 4,
                "temperature": 0.8,
                "seed": n,
                "consent": n % 4 != 3,
            }
            response = client.post("/v1/transform", json=body)
            assert response.status_code == 200, response.text


def test_traffic_becomes_dataset_versions_with_each_teacher(server: dict) -> None:
    _send_traffic(server["url"])
    replica: Replica = server["replica"]
    replica.service.journal.flush()
    env = {
        "KIZUNA_DATA_DIR": str(server["data"]),
        "KIZUNA_BASE_MODEL": str(server["model"]),
        "KIZUNA_DEVICE": "cpu",
        "KIZUNA_TEACHER_URL": f"{server['url']}/v1",
        "KIZUNA_TEACHER_MODEL": "{persona}",
        "KIZUNA_TEACHER_API_KEY": TOKEN,
        "KIZUNA_TEACHER_MAX_NEW_TOKENS": "8",
    }
    runs: dict[str, int] = {}
    for version, teacher in enumerate(("rules", "prompted", "openai"), start=1):
        result = kizuna(
            "relabel", "--persona", "tsundere", "--budget", "5", "--teacher", teacher, env=env
        )
        assert result.returncode == 0, result.stderr
        assert f"relabel-tsundere v{version}" in result.stdout, result.stdout
        assert TOKEN not in result.stdout + result.stderr
        runs[teacher] = version

    with replica.service.sessions() as session:
        picked: set[int] = set()
        for teacher, version in runs.items():
            dataset = get_dataset(session, name="relabel-tsundere", version=version)
            assert dataset.provenance["teacher"]["name"] == teacher
            picks = labelling.picks_of(session, run_id=dataset.provenance["run_id"])
            assert len(picks) == 5 and all(p.target for p in picks)
            assert {p.outcome for p in picks} <= {PickOutcome.KEPT, PickOutcome.DROPPED}
            ids = {p.interaction_id for p in picks}
            assert not ids & picked  # a later run never relabels an earlier run's picks
            picked |= ids
            for pick in picks:
                source = session.get_one(Interaction, pick.interaction_id)
                assert source.consent and source.persona == "tsundere"
                assert source.request_text == pick.input
            rows = dataset_rows(session, dataset_id=dataset.id)
            kept = {p.interaction_id for p in picks if p.outcome == PickOutcome.KEPT}
            assert {row.source_interaction_id for row in rows} == kept
            assert dataset.provenance["source_interaction_ids"] == [
                row.source_interaction_id for row in rows
            ]
            if teacher == "rules":
                # Rules targets are the input with stock phrases glued on: they keep the
                # content, and the persona judge finds no persona in them.
                dropped = dataset.provenance["quality"]["dropped"]
                assert not rows and dropped["content_lost"] == 0 and dropped["off_style"] >= 4

        # The openai teacher's answers came from this server's own chat endpoint: each
        # target is the output of a (non-consented) chat interaction the server logged.
        dataset = get_dataset(session, name="relabel-tsundere", version=runs["openai"])
        replica.service.journal.flush()
        outputs = {
            row.output_text
            for row in session.query(Interaction).filter(Interaction.consent.is_(False))
        }
        picks = labelling.picks_of(session, run_id=dataset.provenance["run_id"])
        assert all(pick.target in outputs for pick in picks)
