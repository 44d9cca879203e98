"""Runs (retrain, federated, evaluation, bootstrap, relabel) and federated rounds."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from kizuna.store.models import FederatedRound, JsonDict, Run, RunKind, RunPhase, utcnow

_FINISHED = (RunPhase.SUCCEEDED, RunPhase.FAILED)


def create_run(
    session: Session, *, kind: RunKind, persona: str | None = None, config: JsonDict | None = None
) -> Run:
    """A new pending run."""
    run = Run(kind=kind, persona=persona, phase=RunPhase.PENDING, config=config or {})
    session.add(run)
    session.flush()
    return run


def update_run(
    session: Session,
    *,
    run_id: int,
    phase: RunPhase | None = None,
    progress: float | None = None,
    message: str | None = None,
    metrics: JsonDict | None = None,
) -> Run:
    """Record progress; metrics are merged, timestamps follow the phase."""
    run = session.get(Run, run_id)
    if run is None:
        raise LookupError(f"no run with id {run_id}")
    if run.phase in _FINISHED and phase is not None and phase != run.phase:
        raise ValueError(f"run {run_id} already {run.phase.value}; cannot move to {phase.value}")
    if phase is not None:
        run.phase = phase
        if phase == RunPhase.RUNNING and run.started_at is None:
            run.started_at = utcnow()
        if phase in _FINISHED:
            run.finished_at = utcnow()
    if progress is not None:
        run.progress = min(max(progress, 0.0), 1.0)
    if message is not None:
        run.message = message
    if metrics:
        run.metrics = {**run.metrics, **metrics}
    session.flush()
    return run


def reopen_run(session: Session, *, run_id: int) -> Run:
    """Move a failed run back to pending so that it can resume where it stopped."""
    run = session.get(Run, run_id)
    if run is None:
        raise LookupError(f"no run with id {run_id}")
    if run.phase != RunPhase.FAILED:
        raise ValueError(f"run {run_id} is {run.phase.value}; only a failed run resumes")
    run.phase, run.finished_at, run.message = RunPhase.PENDING, None, "resuming"
    session.flush()
    return run


def unfinished_run(session: Session, *, kind: RunKind, config: JsonDict) -> Run | None:
    """The newest pending or running run of ``kind`` with exactly this config, to resume."""
    query = select(Run).where(Run.kind == kind, Run.phase.not_in(_FINISHED)).order_by(Run.id.desc())
    return next((run for run in session.scalars(query) if run.config == config), None)


def list_runs(
    session: Session, *, kind: RunKind | None = None, persona: str | None = None, limit: int = 50
) -> Sequence[Run]:
    """The newest runs first."""
    query = select(Run).order_by(Run.id.desc()).limit(limit)
    if kind is not None:
        query = query.where(Run.kind == kind)
    if persona is not None:
        query = query.where(Run.persona == persona)
    return session.scalars(query).all()


def record_round(
    session: Session,
    *,
    run_id: int,
    round_number: int,
    participants: int,
    update_norms: list[float],
    rejected: list[JsonDict] | None = None,
    epsilon: float | None = None,
    details: JsonDict | None = None,
    started_at: datetime | None = None,
) -> FederatedRound:
    """Record one finished federated round of a run."""
    finished = utcnow()
    record = FederatedRound(
        run_id=run_id,
        round_number=round_number,
        participants=participants,
        update_norms=update_norms,
        rejected=rejected or [],
        epsilon=epsilon,
        details=details or {},
        started_at=started_at or finished,
        finished_at=finished,
    )
    session.add(record)
    session.flush()
    return record


def rounds_of(session: Session, *, run_id: int) -> Sequence[FederatedRound]:
    """A run's rounds in order."""
    query = select(FederatedRound).where(FederatedRound.run_id == run_id)
    return session.scalars(query.order_by(FederatedRound.round_number)).all()
