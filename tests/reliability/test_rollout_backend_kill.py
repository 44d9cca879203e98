"""The embedded rollout backend is SIGKILLed after every step it records, and resumed.

``kizuna rollout resume`` runs as a real process while a replica answers traffic; each
time the rollout's recorded state moves (job started, candidate recorded, canary set,
canary step, promotion) the process is killed at once, whatever it is doing, and a new
one is started. The rollout must still end promoted with one retrain job, one new
version and the traffic where the record says.
"""

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from kizuna.config import Settings
from kizuna.datasets.build import build_parallel_corpus
from kizuna.personas import load_profiles
from kizuna.store import adapters
from kizuna.store.db import open_store, transaction
from kizuna.store.models import Run, RunKind
from kizuna.store.rollouts import get_rollout
from support import in_process_replica, rollout_env

pytestmark = [pytest.mark.reliability, pytest.mark.integration, pytest.mark.slow]
TOKEN = "rollout-kill"
NAME = "tsundere-kill-test"
FINAL = {"Promoted", "Rejected", "RolledBack", "Failed"}


def _kizuna(settings: Settings, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "kizuna", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=rollout_env(settings),
    )


def _state(settings: Settings) -> dict[str, Any]:
    with open_store(settings.resolved_database_url)() as session:
        return dict(get_rollout(session, name=NAME).state)


def _recorded(settings: Settings) -> tuple[str, int | None]:
    state = _state(settings)
    return str(state.get("phase")), state.get("step")


def test_a_rollout_killed_after_every_step_resumes_without_duplicates(
    bootstrapped: Settings, tmp_path: Path
) -> None:
    settings = bootstrapped
    build_parallel_corpus(
        {"tsundere": load_profiles()["tsundere"]},
        path=tmp_path / "corpus.jsonl",
        limit=16,
        factory=open_store(settings.resolved_database_url),
    )
    started = _kizuna(
        settings,
        *("rollout", "start", "--persona", "tsundere", "--retrain", "--retrain-steps", "2"),
        *("--name", NAME, "--steps", "0.3,0.6", "--min-requests", "3", "--detach"),
        "--override-gates",  # the tiny test model cannot meet real gates
    )
    assert started.wait(timeout=120) == 0, started.communicate()[0]

    replica = in_process_replica(
        Settings(
            data_dir=settings.data_dir,
            base_model=settings.base_model,
            device="cpu",
            api_tokens=TOKEN,
            serve_refresh_s=0.01,
        )
    )
    client = TestClient(replica.app)
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            body = {"text": "Is the shop open?", "persona": "tsundere", "max_new_tokens": 4}
            client.post("/v1/transform", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
            replica.service.journal.flush()
            time.sleep(0.05)

    sender = threading.Thread(target=traffic, daemon=True)
    sender.start()
    kills: list[tuple[str, int | None]] = []
    deadline = time.monotonic() + 900
    try:
        seen = _recorded(settings)
        while seen[0] not in FINAL and time.monotonic() < deadline:
            backend = _kizuna(settings, "rollout", "resume", NAME, "--interval-s", "0.2")
            while backend.poll() is None and time.monotonic() < deadline:
                now = _recorded(settings)
                if now != seen:  # a step was recorded: kill the backend straight away
                    backend.send_signal(signal.SIGKILL)
                    kills.append(now)
                    seen = now
                    break
                time.sleep(0.1)
            backend.wait(timeout=60)
            seen = _recorded(settings)
    finally:
        stop.set()
        sender.join(timeout=60)
        replica.close()

    print(f"\nrollout backend SIGKILLed after each recorded step: {kills}")
    assert seen[0] == "Promoted", _state(settings)
    # Gating passes within one check when the gates are overridden, so it is not always
    # seen between polls; every other step is.
    assert {"Training", ("Canary", 0), ("Canary", 1), "Promoted"} <= {
        *(phase for phase, _ in kills),
        *kills,
    }, kills
    with transaction(open_store(settings.resolved_database_url)) as session:
        versions = [a.version for a in adapters.list_adapters(session, persona="tsundere")]
        retrains = session.scalars(select(Run).where(Run.kind == RunKind.RETRAIN)).all()
        stable = adapters.stable_adapter(session, persona="tsundere").version
        canary = adapters.canary_adapter(session, persona="tsundere")
    assert sorted(versions) == [1, 2]  # one candidate, registered once
    assert len(retrains) == 1 and retrains[0].config["job_name"] == f"{NAME}-retrain"
    assert stable == 2 and canary is None
    jobs = sorted(p.name for p in (settings.data_dir / "jobs").glob("*.json"))
    assert jobs == [f"{NAME}-retrain.json"]
