"""A RetrainRun's status ↔ the rollout's recorded state, and the conditions kubectl shows."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from kizuna.rollout.resources import Condition, RetrainRunStatus
from kizuna.rollout.state import Phase, RolloutState


def state_from_status(status: dict[str, Any]) -> RolloutState:
    """The rollout state recorded in a RetrainRun's status (empty: a new run)."""
    recorded = RetrainRunStatus.model_validate(
        {k: v for k, v in status.items() if k in RetrainRunStatus.model_fields or k in _ALIASES}
    )
    return RolloutState(
        phase=Phase(recorded.phase),
        job=recorded.ray_job,
        candidate=recorded.candidate_version,
        baseline=recorded.baseline,
        step=recorded.step,
        weight=recorded.canary_weight,
        step_started_at=datetime.fromisoformat(recorded.step_started_at)
        if recorded.step_started_at
        else None,
        message=recorded.message,
    )


_ALIASES = {field.alias for field in RetrainRunStatus.model_fields.values() if field.alias}


def status_from_state(
    state: RolloutState, *, metrics: dict[str, Any], now: datetime | None = None
) -> dict[str, Any]:
    """The status patch that records ``state`` (camelCase, JSON-ready)."""
    stamp = (now or datetime.now(UTC)).isoformat()
    ready = Condition(
        type="Ready",
        status="True" if state.phase == Phase.PROMOTED else "False",
        reason=state.phase.value,
        message=state.message,
        last_transition_time=stamp,
    )
    status = RetrainRunStatus(
        phase=state.phase.value,
        ray_job=state.job,
        candidate_version=state.candidate,
        baseline=state.baseline,
        step=state.step,
        canary_weight=state.weight,
        step_started_at=state.step_started_at.isoformat() if state.step_started_at else None,
        message=state.message,
        metrics=metrics,
        conditions=[ready],
    )
    return status.model_dump(mode="json", by_alias=True)
