"""The embedded rollout backend on a real store (SQLite and PostgreSQL): registry moves,
live metrics from logged interactions, deadlines, restarts and a local retrain job."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from kizuna.config import Settings
from kizuna.rollout.local import LocalBackend
from kizuna.rollout.spec import Gates, RolloutPolicy, RolloutSpec
from kizuna.rollout.state import Phase
from kizuna.store import adapters, rollouts
from kizuna.store.db import transaction
from kizuna.store.models import AdapterStatus, utcnow
from support import log_served

GOOD = {
    "style_accuracy": 0.9,
    "content_preservation": 0.95,
    "latency_p95_ms": 120.0,
    "gates": {"strength_monotonic": True},
}
GATES = Gates(min_canary_requests=5)


@pytest.fixture
def backend(sessions: sessionmaker[Session], tmp_path: Path) -> LocalBackend:
    with transaction(sessions) as session:
        for status, metrics in ((AdapterStatus.STABLE, {}), (AdapterStatus.CANDIDATE, GOOD)):
            adapters.register_adapter(
                session,
                persona="tsundere",
                artifact_url=f"file:///artifacts/{uuid.uuid4()}",
                sha256="0" * 64,
                status=status,
                metrics=metrics,
            )
    return LocalBackend(Settings(data_dir=tmp_path / "data"), sessions)


def serve(backend: LocalBackend, version: int, n: int, *, entropy: float = 1.0) -> None:
    log_served(backend.sessions, version=version, n=n, entropy=entropy)


def traffic(backend: LocalBackend) -> tuple[int, int | None, float]:
    with backend.sessions() as session:
        stable = adapters.stable_adapter(session, persona="tsundere").version
        canary = adapters.canary_adapter(session, persona="tsundere")
        return stable, canary and canary.version, canary.traffic_weight if canary else 0.0


def drive(backend: LocalBackend, name: str, limit: int = 10) -> Phase:
    """Step until the backend waits (no action) or the rollout ends."""
    for _ in range(limit):
        state, plan = backend.step(name)
        if state.phase.final or not plan.actions:
            return state.phase
    raise AssertionError("the rollout never settled")


def test_a_healthy_canary_steps_up_and_is_promoted(backend: LocalBackend) -> None:
    spec = RolloutSpec(name="r1", persona="tsundere", candidate=2, gates=GATES)
    backend.start(spec)
    serve(backend, 1, 30)
    assert drive(backend, "r1") == Phase.CANARY
    assert traffic(backend) == (1, 2, 0.1)
    serve(backend, 2, 5)
    assert drive(backend, "r1") == Phase.CANARY
    assert traffic(backend) == (1, 2, 0.5)
    serve(backend, 2, 4)
    assert drive(backend, "r1") == Phase.CANARY  # 4 < 5 requests at this step
    serve(backend, 2, 1)
    assert drive(backend, "r1") == Phase.PROMOTED
    assert traffic(backend) == (2, None, 0.0)
    with backend.sessions() as session:
        assert adapters.get_adapter(session, persona="tsundere", version=1).status == "retired"
        events = rollouts.get_rollout(session, name="r1").events
    assert [e["action"] for e in events] == [
        "candidate v2",
        "canary v2 at 10% of traffic (step 1)",
        "canary v2 at 50% of traffic (step 2)",
        "promoted v2 to stable",
    ]


def test_a_degrading_canary_is_rolled_back_and_stable_untouched(backend: LocalBackend) -> None:
    backend.start(RolloutSpec(name="r2", persona="tsundere", candidate=2, gates=GATES))
    serve(backend, 1, 30, entropy=1.0)
    drive(backend, "r2")
    serve(backend, 2, 5, entropy=2.0)
    assert drive(backend, "r2") == Phase.ROLLED_BACK
    assert traffic(backend) == (1, None, 0.0)
    _, state = backend.load("r2")
    assert "1.00 nats above stable's 1.00" in state.message
    with backend.sessions() as session:
        assert adapters.get_adapter(session, persona="tsundere", version=2).status == "retired"


def test_a_canary_without_traffic_is_rolled_back_after_the_deadline(
    backend: LocalBackend,
) -> None:
    policy = RolloutPolicy(metrics_deadline_s=60)
    spec = RolloutSpec(name="r3", persona="tsundere", candidate=2, gates=GATES, policy=policy)
    backend.start(spec)
    drive(backend, "r3")
    serve(backend, 2, 2)
    state, plan = backend.step("r3", now=utcnow() + timedelta(seconds=30))
    assert state.phase == Phase.CANARY and plan.waiting_for == "canary step 1: 2/5 requests"
    state, _ = backend.step("r3", now=utcnow() + timedelta(seconds=120))
    assert state.phase == Phase.ROLLED_BACK
    assert state.message.startswith("rolled back v2: no canary traffic for")
    assert traffic(backend) == (1, None, 0.0)


def test_a_candidate_failing_its_gates_never_reaches_traffic(backend: LocalBackend) -> None:
    with transaction(backend.sessions) as session:
        adapters.get_adapter(session, persona="tsundere", version=2).metrics = {
            **GOOD,
            "content_preservation": 0.5,
        }
    backend.start(RolloutSpec(name="r4", persona="tsundere", candidate=2, gates=GATES))
    assert drive(backend, "r4") == Phase.REJECTED
    assert traffic(backend) == (1, None, 0.0)


def test_a_restarted_backend_resumes_from_the_record(
    backend: LocalBackend, sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    backend.start(RolloutSpec(name="r5", persona="tsundere", candidate=2, gates=GATES))
    serve(backend, 1, 30)
    drive(backend, "r5")
    # A new backend object: nothing in memory survives, only the store.
    restarted = LocalBackend(Settings(data_dir=tmp_path / "data"), sessions)
    serve(restarted, 2, 5)
    assert drive(restarted, "r5") == Phase.CANARY
    serve(restarted, 2, 5)
    assert drive(restarted, "r5") == Phase.PROMOTED
    with sessions() as session:
        assert len(rollouts.get_rollout(session, name="r5").events) == 4


def test_manual_decisions_and_pauses(backend: LocalBackend) -> None:
    backend.start(RolloutSpec(name="r6", persona="tsundere", candidate=2, gates=GATES))
    drive(backend, "r6")
    backend.decide("r6", {"paused": True})
    serve(backend, 2, 50)
    _, plan = backend.step("r6")
    assert plan.waiting_for == "paused" and traffic(backend) == (1, 2, 0.1)
    backend.decide("r6", {"paused": False, "decision": "rollback"})
    assert drive(backend, "r6") == Phase.ROLLED_BACK
    with pytest.raises(ValueError):
        backend.decide("r6", {"decision": "sideways"})


def test_bad_starts_are_refused(backend: LocalBackend) -> None:
    with pytest.raises(LookupError):
        backend.start(RolloutSpec(name="r7", persona="tsundere", candidate=9))
    backend.start(RolloutSpec(name="r7", persona="tsundere", candidate=2))
    with pytest.raises(rollouts.RolloutExistsError):
        backend.start(RolloutSpec(name="r7", persona="tsundere", candidate=2))


@pytest.mark.integration
def test_a_retrain_job_that_cannot_start_fails_the_rollout(backend: LocalBackend) -> None:
    # The job refuses the config (an unknown field) and exits before recording a run.
    spec = RolloutSpec(name="r8", persona="tsundere", retrain={"stepz": 3})
    backend.start(spec)
    state, _ = backend.step("r8")
    assert state.phase == Phase.TRAINING and state.job == "r8-retrain"
    backend.jobs._children["r8-retrain"].wait(timeout=120)
    state, _ = backend.step("r8")
    assert state.phase == Phase.FAILED
    assert "the process exited early; see" in state.message
    log = (backend.jobs.directory / "r8-retrain.log").read_text()
    assert "stepz" in log
