"""What a rollout sees in the store: traffic, the candidate, and live canary metrics.

Both backends read these from the same store; only the retrain job is observed
differently (a local process, or a RayJob), so it is passed in.
"""

from __future__ import annotations

import math
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from kizuna.rollout.spec import RolloutSpec
from kizuna.rollout.state import (
    CandidateObservation,
    JobObservation,
    JobPhase,
    LiveMetrics,
    Observed,
    RolloutState,
    Traffic,
)
from kizuna.store import adapters as adapter_store
from kizuna.store.adapters import AdapterNotFoundError
from kizuna.store.interactions import ServedRequest, served_by
from kizuna.store.models import AdapterStatus, Run, RunKind, RunPhase


def observe(
    session: Session,
    spec: RolloutSpec,
    state: RolloutState,
    *,
    now: datetime,
    job: JobObservation | None,
) -> Observed:
    """The world as the rollout's reconcile needs it."""
    traffic = current_traffic(session, spec.persona)
    live = baseline = LiveMetrics()
    if state.candidate is not None and state.step_started_at is not None:
        live = live_metrics(
            served_by(
                session, persona=spec.persona, version=state.candidate, since=state.step_started_at
            )
        )
    if traffic.stable is not None:
        recent = served_by(
            session, persona=spec.persona, version=traffic.stable, since=state.step_started_at
        )
        if len(recent) < spec.gates.min_canary_requests:  # a quiet window: look further back
            recent = served_by(
                session, persona=spec.persona, version=traffic.stable, since=None, limit=1000
            )
        baseline = live_metrics(recent)
    return Observed(
        now=now,
        traffic=traffic,
        job=job,
        candidate=_candidate(session, spec.persona, state.candidate),
        canary=live,
        baseline=baseline,
    )


def current_traffic(session: Session, persona: str) -> Traffic:
    """Which versions serve ``persona`` now, from the registry."""
    stable = adapter_store.adapter_with_status(
        session, persona=persona, status=AdapterStatus.STABLE
    )
    canary = adapter_store.canary_adapter(session, persona=persona)
    return Traffic(
        stable=stable.version if stable else None,
        canary=canary.version if canary else None,
        canary_weight=canary.traffic_weight if canary else 0.0,
    )


def _candidate(session: Session, persona: str, version: int | None) -> CandidateObservation | None:
    if version is None:
        return None
    try:
        record = adapter_store.get_adapter(session, persona=persona, version=version)
    except AdapterNotFoundError:
        return None
    retired = record.status == AdapterStatus.RETIRED
    return CandidateObservation(record.version, dict(record.metrics), retired)


def live_metrics(requests: list[ServedRequest]) -> LiveMetrics:
    """Count, mean entropy, p95 latency (nearest rank) and the newest time of requests."""
    if not requests:
        return LiveMetrics()
    latencies = sorted(r.latency_ms for r in requests)
    rank = max(math.ceil(0.95 * len(latencies)) - 1, 0)
    return LiveMetrics(
        requests=len(requests),
        entropy_mean=sum(r.entropy_mean for r in requests) / len(requests),
        latency_p95_ms=latencies[rank],
        last_request_at=max(r.created_at for r in requests),
    )


_JOB_PHASES = {
    RunPhase.PENDING: JobPhase.PENDING,
    RunPhase.RUNNING: JobPhase.RUNNING,
    RunPhase.SUCCEEDED: JobPhase.SUCCEEDED,
    RunPhase.FAILED: JobPhase.FAILED,
}


def retrain_run(session: Session, *, job_name: str) -> JobObservation | None:
    """The retrain run a job of that name recorded, as a job observation."""
    runs = session.scalars(
        select(Run).where(Run.kind == RunKind.RETRAIN).order_by(Run.id.desc()).limit(200)
    )
    run = next((r for r in runs if r.config.get("job_name") == job_name), None)
    if run is None:
        return None
    version = run.metrics.get("candidate_version")
    return JobObservation(
        _JOB_PHASES[run.phase], version if isinstance(version, int) else None, run.message
    )
