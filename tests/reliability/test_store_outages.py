"""The store goes away under traffic: nothing acknowledged is lost, ingestion resumes.

PostgreSQL is stopped (as a crash: ``-m immediate``) and started again while requests
keep coming; a replica process writing to SQLite is SIGKILLed mid-traffic and a new one
started on the same data dir. Requests are counted on the client and rows in the store.
"""

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from kizuna.bootstrap import bootstrap
from kizuna.config import Settings
from kizuna.demo.traffic import Fleet, SimulatedDevice
from kizuna.model.finetune import FinetuneArgs
from kizuna.store.db import make_engine, session_factory
from kizuna.store.models import Interaction
from support import PostgresServer, QuietProgress, free_port, in_process_replica

pytestmark = [pytest.mark.reliability, pytest.mark.integration]
TOKEN = "reliability-token"
BODY = {"text": "The train leaves at nine.", "persona": "tsundere", "max_new_tokens": 4}


def _stored_ids(database_url: str) -> Counter[str]:
    engine = make_engine(database_url)
    try:
        with session_factory(engine)() as session:
            return Counter(session.scalars(select(Interaction.public_id)))
    finally:
        engine.dispose()


def _wait_for(condition, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.5)
    return condition()


@pytest.mark.postgres
def test_a_postgresql_restart_during_ingestion_loses_nothing(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    server = PostgresServer.create()
    try:
        settings = Settings(
            data_dir=tmp_path / "data",
            base_model=str(tiny_model_dir),
            device="cpu",
            database_url=server.url,
            api_tokens=TOKEN,
            serve_refresh_s=0.5,
        )
        bootstrap(
            settings, progress=QuietProgress(), args=FinetuneArgs(steps=1), personas=["tsundere"]
        )
        replica = in_process_replica(settings)
        client = TestClient(replica.app)
        acknowledged: list[str] = []
        statuses: Counter[int] = Counter()

        def send(count: int) -> None:
            for i in range(count):
                response = client.post(
                    "/v1/transform",
                    json={**BODY, "text": f"{BODY['text']} ({len(statuses)}-{i})"},
                    headers={"Authorization": f"Bearer {TOKEN}"},
                )
                statuses[response.status_code] += 1
                if response.status_code == 200:
                    acknowledged.append(response.json()["interaction_id"])

        send(10)
        server.stop()  # the database crashes mid-traffic
        time.sleep(1)  # past serve_refresh_s: the registry lookup itself now fails
        send(20)  # served from the cached registry, journaled on local disk
        assert replica.service.journal.flush(timeout_s=1) is False  # nothing can be moved
        server.start()
        send(10)
        assert replica.service.journal.flush(timeout_s=60), "ingestion did not resume"
        replica.close()
    finally:
        stored = _stored_ids(server.url) if server.url else Counter()
        server.remove()
    print(f"\nPostgreSQL restart: sent 40, statuses {dict(statuses)}, stored {len(stored)}")
    assert statuses == {200: 40}
    assert set(acknowledged) <= set(stored), "acknowledged interactions were lost"
    assert max(stored.values()) == 1


def test_a_killed_sqlite_writer_loses_nothing_and_the_store_stays_intact(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    data = tmp_path / "data"
    settings = Settings(data_dir=data, base_model=str(tiny_model_dir), device="cpu")
    bootstrap(settings, progress=QuietProgress(), args=FinetuneArgs(steps=1), personas=["tsundere"])
    env = {
        **os.environ,
        "KIZUNA_DATA_DIR": str(data),
        "KIZUNA_BASE_MODEL": str(tiny_model_dir),
        "KIZUNA_DEVICE": "cpu",
        "KIZUNA_API_TOKENS": TOKEN,
        "PYTHONPATH": str(Path(__file__).parents[1]),
    }
    script = Path(__file__).with_name("replica_server.py")

    def start() -> tuple[subprocess.Popen[bytes], str]:
        port = free_port()
        process = subprocess.Popen([sys.executable, str(script), str(port)], env=env)
        url = f"http://127.0.0.1:{port}"
        assert _wait_for(lambda: _healthy(url), 120), "the replica did not start"
        return process, url

    writer, url = start()
    device = SimulatedDevice("phone-1", TOKEN, ("tsundere", "cool"), consent=True)
    fleet = Fleet(url, [device] * 4, seed=1, max_new_tokens=4, max_attempts=1)
    try:
        with fleet.background() as tally:
            assert _wait_for(lambda: tally.answered >= 30, 120)
            writer.send_signal(signal.SIGKILL)  # mid-append, mid-commit: wherever it is
            writer.wait()
    finally:
        fleet.close()
    acknowledged = list(tally.interaction_ids)
    successor, url = start()  # replays the segments its predecessor left
    try:
        response = httpx.post(
            f"{url}/v1/transform", json=BODY, headers={"Authorization": f"Bearer {TOKEN}"}
        )
        assert response.status_code == 200  # ingestion resumes with new traffic
        database_url = settings.resolved_database_url
        assert _wait_for(lambda: set(acknowledged) <= set(_stored_ids(database_url)), 30), (
            "acknowledged interactions were lost"
        )
    finally:
        successor.terminate()
        successor.wait(timeout=60)
    stored = _stored_ids(database_url)
    database = sqlite3.connect(data / "kizuna.db")
    try:
        assert database.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        database.close()
    failed = tally.sent - tally.answered
    print(
        f"\nSQLite writer SIGKILL: sent {tally.sent}, acknowledged {len(acknowledged)}, "
        f"refused while no server ran {failed}, stored {len(stored)}"
    )
    assert max(stored.values()) == 1
    assert response.json()["interaction_id"] in stored


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False
