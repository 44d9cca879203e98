"""A Serve replica is SIGKILLed under concurrent load from several devices.

Ray Serve replaces the replica. The requests the dead replica held get a 500 from Serve's
proxy (Ray's behaviour; it cannot be told from any other server error), and the devices
retry them with the same ``Idempotency-Key``. Every request ends answered or refused with
a retryable status, and every acknowledged interaction is in the store exactly once (the
killed replica's journal is replayed by its successor).
"""

import os
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
import ray
from sqlalchemy import select

from kizuna.bootstrap import bootstrap
from kizuna.config import Settings
from kizuna.demo.traffic import Fleet, SimulatedDevice
from kizuna.model.finetune import FinetuneArgs
from kizuna.serve import launch
from kizuna.serve.journal import InteractionJournal
from kizuna.store.db import make_engine, session_factory, transaction
from kizuna.store.devices import register_device
from kizuna.store.models import Interaction
from support import QuietProgress, free_port

pytestmark = [pytest.mark.reliability, pytest.mark.integration, pytest.mark.slow]
PERSONAS = ("tsundere", "cool")


def _replica_pids() -> list[int]:
    """Process ids of the live Serve replicas (asked of each replica actor itself)."""
    pids = []
    for actor in ray.util.list_named_actors(all_namespaces=True):
        if actor["name"].startswith("SERVE_REPLICA::"):
            handle = ray.get_actor(actor["name"], namespace=actor["namespace"])
            try:
                pids.append(ray.get(handle.__ray_call__.remote(lambda _: os.getpid()), timeout=30))
            except ray.exceptions.RayError:
                continue  # dead or being replaced
    return pids


def test_a_killed_replica_loses_no_acknowledged_interaction(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    settings = Settings(
        data_dir=tmp_path / "data",
        base_model=str(tiny_model_dir),
        device="cpu",
        api_tokens="replica-kill",
        serve_port=free_port(),
        serve_replicas=2,
        serve_batch_wait_ms=20,
    )
    bootstrap(
        settings, progress=QuietProgress(), args=FinetuneArgs(steps=1), personas=list(PERSONAS)
    )
    sessions = session_factory(make_engine(settings.resolved_database_url))
    with transaction(sessions) as session:
        devices = [
            SimulatedDevice(
                f"gadget-{i}",
                register_device(session, device_id=f"gadget-{i}"),
                PERSONAS,
                consent=True,
            )
            for i in range(6)
        ]
    url = launch.start(settings)
    fleet = Fleet(url, devices, seed=3, max_new_tokens=6, max_attempts=8)
    try:
        with fleet.background() as tally:
            deadline = time.monotonic() + 180
            while tally.answered < 30 and time.monotonic() < deadline:
                time.sleep(0.5)
            victims = _replica_pids()
            assert len(victims) == 2
            os.kill(victims[0], signal.SIGKILL)
            answered_at_kill = tally.answered
            while tally.answered < answered_at_kill + 60 and time.monotonic() < deadline + 120:
                time.sleep(0.5)
            replaced = _replica_pids()
        assert victims[0] not in replaced
    finally:
        fleet.close()
        launch.stop()
        if ray.is_initialized():
            ray.shutdown()
    journal = InteractionJournal(settings.data_dir / "journal", sessions)  # leftovers, if any
    journal.start()
    journal.close()
    with sessions() as session:
        stored = Counter(session.scalars(select(Interaction.public_id)))
    acknowledged = set(tally.interaction_ids)
    print(
        f"\nreplica SIGKILL under load: sent {tally.sent}, answered {tally.answered}, "
        f"retried {tally.retried}, 5xx from the proxy {tally.server_errors}, "
        f"refused {tally.refused}, errors {len(tally.errors)}, "
        f"acknowledged missing from the store {len(acknowledged - set(stored))}"
    )
    assert tally.errors == []
    assert tally.server_errors <= len(devices)  # only what was in flight at the kill
    assert tally.answered + tally.refused == tally.sent
    assert tally.answered >= answered_at_kill + 60
    assert acknowledged <= set(stored)
    assert max(stored.values()) == 1
