"""What reconcile asks a backend to do, and how each action moves the rollout's record.

Effects (creating a job, moving traffic) are the backend's; :func:`advance` is the one
place the record changes, so both backends record the same history. Every effect must
be idempotent: a backend that restarts between an effect and saving the record repeats
the effect, and a repeated effect must change nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from kizuna.rollout.state import Phase, RolloutState


@dataclass(frozen=True)
class CreateJob:
    """Start the retrain job (a RayJob, or a local run) under a derived name."""

    name: str


@dataclass(frozen=True)
class RecordCandidate:
    """Adopt the version the job registered (or the one asked for) as the candidate."""

    version: int


@dataclass(frozen=True)
class Reject:
    """The candidate failed its offline gates; it never reaches traffic."""

    reasons: tuple[str, ...]


@dataclass(frozen=True)
class SetCanary:
    """Serve ``version`` to ``weight`` of the persona's traffic (canary step ``step``)."""

    version: int
    weight: float
    step: int


@dataclass(frozen=True)
class Promote:
    """Make ``version`` the stable version; the old stable retires."""

    version: int


@dataclass(frozen=True)
class RollBack:
    """Take ``version`` out of traffic; the stable version is left as it is."""

    version: int
    reason: str


@dataclass(frozen=True)
class MarkFailed:
    """The rollout cannot go on (its job failed, its candidate vanished)."""

    reason: str


Action = CreateJob | RecordCandidate | Reject | SetCanary | Promote | RollBack | MarkFailed


def describe(action: Action) -> str:
    """One line for logs, events and the audit trail."""
    match action:
        case CreateJob(name):
            return f"created retrain job {name}"
        case RecordCandidate(version):
            return f"candidate v{version}"
        case Reject(reasons):
            return "rejected by offline gates: " + "; ".join(reasons)
        case SetCanary(version, weight, step):
            return f"canary v{version} at {weight:.0%} of traffic (step {step + 1})"
        case Promote(version):
            return f"promoted v{version} to stable"
        case RollBack(version, reason):
            return f"rolled back v{version}: {reason}"
        case MarkFailed(reason):
            return f"failed: {reason}"


def advance(
    state: RolloutState, action: Action, *, now: datetime, stable: int | None
) -> RolloutState:
    """The record after ``action`` took effect; ``stable`` is the stable version before it."""
    message = describe(action)
    match action:
        case CreateJob(name):
            changes: dict[str, object] = {"phase": Phase.TRAINING, "job": name}
        case RecordCandidate(version):
            changes = {"phase": Phase.GATING, "candidate": version}
        case Reject():
            changes = {"phase": Phase.REJECTED}
        case SetCanary(_, weight, step):
            changes = {"phase": Phase.CANARY, "weight": weight, "step": step}
            if state.step != step:
                changes["step_started_at"] = now
            if state.phase != Phase.CANARY:
                changes["baseline"] = stable
        case Promote():
            changes = {"phase": Phase.PROMOTED, "weight": 1.0}
        case RollBack():
            changes = {"phase": Phase.ROLLED_BACK, "weight": 0.0}
        case MarkFailed():
            changes = {"phase": Phase.FAILED}
    return state.model_copy(update={**changes, "message": message})
