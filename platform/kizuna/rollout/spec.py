"""What a rollout is asked to do: the candidate (or the job that makes it), gates, policy.

These models are also the ``spec`` of the custom resources (camelCase on the wire, see
``resources.py``), so they are validated the same way in both backends.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel


class WireModel(BaseModel):
    """camelCase aliases for Kubernetes, snake_case in Python; unknown fields refused."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class Gates(WireModel):
    """Bounds a candidate must meet offline (its report) and live (as a canary)."""

    min_style_accuracy: float = Field(
        default=0.80, ge=0, le=1, description="Offline: persona classifier accuracy."
    )
    min_content_preservation: float = Field(
        default=0.85, ge=0, le=1, description="Offline: share of outputs keeping facts and meaning."
    )
    max_latency_ms: float = Field(
        default=500.0, gt=0, description="p95 latency of a short transform, offline and live."
    )
    max_entropy_drift: float = Field(
        default=0.5,
        ge=0,
        description="Live: how far the canary's mean token entropy (nats) may rise above "
        "the stable version's.",
    )
    min_canary_requests: int = Field(
        default=20, ge=1, description="Live requests a canary step needs before a decision."
    )
    require_report_gates: bool = Field(
        default=True, description="Also block on any gate the evaluation report failed."
    )


class RolloutPolicy(WireModel):
    """How traffic moves to a canary that keeps passing its gates."""

    steps: list[float] = Field(
        default_factory=lambda: [0.1, 0.5],
        min_length=1,
        description="Canary traffic shares, in order; after the last step it is promoted.",
    )
    metrics_deadline_s: float = Field(
        default=600.0,
        gt=0,
        description="Roll back when a canary step has seen no request for this long and "
        "has not yet reached min_canary_requests.",
    )

    @field_validator("steps")
    @classmethod
    def _rising_shares(cls, steps: list[float]) -> list[float]:
        if any(not 0 < s < 1 for s in steps):
            raise ValueError("every step is a traffic share strictly between 0 and 1")
        if any(b <= a for a, b in pairwise(steps)):
            raise ValueError("steps must rise")
        return steps


Decision = Literal["promote", "rollback"]


class RolloutSpec(WireModel):
    """One rollout of one persona: of a given candidate, or of what a retrain job makes."""

    name: str = Field(min_length=1, max_length=40, description="Unique; names the job too.")
    persona: str = Field(min_length=1, max_length=32)
    candidate: int | None = Field(
        default=None, ge=1, description="An existing candidate version; none: retrain first."
    )
    retrain: dict[str, Any] = Field(
        default_factory=dict,
        description="Fields of the retrain job's config (steps, datasets, teacher, warm "
        "start, trainer); the job validates them.",
    )
    gates: Gates = Field(default_factory=Gates)
    policy: RolloutPolicy = Field(default_factory=RolloutPolicy)
    override_gates: bool = Field(
        default=False,
        description="Start the canary although the offline gates fail: an operator's "
        "decision (the live gates still apply).",
    )
    paused: bool = Field(default=False, description="Take no action until unpaused.")
    decision: Decision | None = Field(
        default=None, description="An operator's manual decision for a running canary."
    )

    @property
    def job_name(self) -> str:
        """The retrain job's name: derived, so a restarted backend finds the same job."""
        return f"{self.name}-retrain"
