"""What a rollout has recorded about itself, and what its backend observes of the world."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict


class Phase(enum.StrEnum):
    """Where a rollout stands; the last four are final."""

    PENDING = "Pending"
    TRAINING = "Training"
    GATING = "Gating"
    CANARY = "Canary"
    PROMOTED = "Promoted"
    REJECTED = "Rejected"  # failed its offline gates: never reached traffic
    ROLLED_BACK = "RolledBack"
    FAILED = "Failed"

    @property
    def final(self) -> bool:
        """No further action is taken in a final phase."""
        return self in (Phase.PROMOTED, Phase.REJECTED, Phase.ROLLED_BACK, Phase.FAILED)


class RolloutState(BaseModel):
    """The rollout's own record: the CR's status, or a row of the local store."""

    model_config = ConfigDict(frozen=True)

    phase: Phase = Phase.PENDING
    job: str | None = None
    candidate: int | None = None
    baseline: int | None = None  # the stable version when the canary started
    step: int | None = None
    weight: float = 0.0
    step_started_at: datetime | None = None
    message: str = ""


class JobPhase(enum.StrEnum):
    """A retrain job as its backend sees it (a RayJob, or a local run)."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(frozen=True)
class JobObservation:
    """The rollout's retrain job, when it exists."""

    phase: JobPhase
    candidate: int | None = None  # the version the job registered, once it has
    message: str = ""


@dataclass(frozen=True)
class CandidateObservation:
    """The candidate's registry entry: its headline metrics and report gates."""

    version: int
    metrics: dict[str, Any] = field(default_factory=dict)
    retired: bool = False  # taken out of traffic (rolled back) in the registry


@dataclass(frozen=True)
class Traffic:
    """Which versions of the persona serve now, from the registry."""

    stable: int | None = None
    canary: int | None = None
    canary_weight: float = 0.0


@dataclass(frozen=True)
class LiveMetrics:
    """Live requests one version served in a window, from the interaction log."""

    requests: int = 0
    entropy_mean: float | None = None
    latency_p95_ms: float | None = None
    last_request_at: datetime | None = None


@dataclass(frozen=True)
class Observed:
    """Everything reconcile may look at besides the rollout's own record."""

    now: datetime
    traffic: Traffic = field(default_factory=Traffic)
    job: JobObservation | None = None
    candidate: CandidateObservation | None = None
    canary: LiveMetrics = field(default_factory=LiveMetrics)  # since the step started
    baseline: LiveMetrics = field(default_factory=LiveMetrics)  # the stable version's
