"""The rollout's reconcile: desired state + recorded state + observed world → actions.

Pure and level-triggered: it looks at what is (the job, the registry, live metrics),
not at what it did last, so a backend that restarts anywhere asks for the same next
step. It returns at most one transition per call; backends call it again at once after
acting and wait a while when it returns none.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kizuna.rollout.actions import (
    Action,
    CreateJob,
    MarkFailed,
    Promote,
    RecordCandidate,
    Reject,
    RollBack,
    SetCanary,
)
from kizuna.rollout.checks import live_problem, offline_failures
from kizuna.rollout.spec import RolloutSpec
from kizuna.rollout.state import JobPhase, Observed, Phase, RolloutState, Traffic


@dataclass(frozen=True)
class Plan:
    """The actions to take now (none: wait), and why."""

    actions: list[Action] = field(default_factory=list)
    waiting_for: str = ""


def _wait(reason: str) -> Plan:
    return Plan(waiting_for=reason)


def reconcile(spec: RolloutSpec, state: RolloutState, world: Observed) -> Plan:
    """The next step of ``spec``'s rollout."""
    if state.phase.final:
        return _wait(f"finished: {state.phase.value}")
    if spec.paused:
        return _wait("paused")
    match state.phase:
        case Phase.PENDING:
            if spec.candidate is not None:
                return Plan([RecordCandidate(spec.candidate)])
            return Plan([CreateJob(spec.job_name)])
        case Phase.TRAINING:
            return _training(spec, world)
        case Phase.GATING:
            return _gating(spec, state, world)
        case _:
            return _canary(spec, state, world)


def _training(spec: RolloutSpec, world: Observed) -> Plan:
    job = world.job
    if job is None:  # lost, or never created before a restart: creating is idempotent
        return Plan([CreateJob(spec.job_name)])
    if job.phase == JobPhase.FAILED:
        return Plan([MarkFailed(f"retrain job {spec.job_name} failed: {job.message}".strip())])
    if job.phase != JobPhase.SUCCEEDED:
        return _wait(f"retrain job {spec.job_name} {job.phase.value}")
    if job.candidate is None:
        return Plan([MarkFailed(f"retrain job {spec.job_name} registered no candidate")])
    return Plan([RecordCandidate(job.candidate)])


def _gating(spec: RolloutSpec, state: RolloutState, world: Observed) -> Plan:
    candidate = world.candidate
    if candidate is None or candidate.version != state.candidate:
        return Plan([MarkFailed(f"candidate v{state.candidate} is not in the registry")])
    failures = offline_failures(spec.gates, candidate.metrics)
    if failures and not spec.override_gates:
        return Plan([Reject(tuple(failures))])
    return Plan([SetCanary(candidate.version, spec.policy.steps[0], 0)])


def _canary(spec: RolloutSpec, state: RolloutState, world: Observed) -> Plan:
    assert state.candidate is not None and state.step is not None
    version, step, steps = state.candidate, state.step, spec.policy.steps
    traffic = world.traffic
    if traffic.stable == version:  # promoted, and the record of it was lost in a restart
        return Plan([Promote(version)])
    if spec.decision == "rollback":
        return Plan([RollBack(version, "rolled back by an operator")])
    if spec.decision == "promote":
        return Plan([Promote(version)])
    serving = _serving_step(steps, traffic) if traffic.canary == version else None
    if serving is None and world.candidate is not None and world.candidate.retired:
        # Out of traffic and retired: rolled back, by this rollout before a restart
        # (the same evidence gives the same reason) or by hand.
        verdict = _judge(spec, state, world)
        rollback = next((a for a in verdict.actions if isinstance(a, RollBack)), None)
        return Plan([rollback or RollBack(version, "taken out of traffic by hand")])
    if serving is None or serving < step:
        # The recorded step is not what serves (an effect lost in a restart, or a hand
        # edit): put it back before judging any metrics.
        return Plan([SetCanary(version, steps[step], step)])
    if serving > step:  # a step was taken and its record lost: adopt it
        return Plan([SetCanary(version, steps[serving], serving)])
    return _judge(spec, state, world)


def _serving_step(steps: list[float], traffic: Traffic) -> int | None:
    return next(
        (i for i, share in enumerate(steps) if abs(traffic.canary_weight - share) < 1e-9), None
    )


def _judge(spec: RolloutSpec, state: RolloutState, world: Observed) -> Plan:
    """The canary step's verdict from its live metrics: wait, roll back, step or promote."""
    assert state.candidate is not None and state.step is not None
    version, step, steps = state.candidate, state.step, spec.policy.steps
    live = world.canary
    if live.requests < spec.gates.min_canary_requests:
        assert state.step_started_at is not None
        last = max(state.step_started_at, live.last_request_at or state.step_started_at)
        silent_s = (world.now - last).total_seconds()
        if silent_s > spec.policy.metrics_deadline_s:
            return Plan([RollBack(version, f"no canary traffic for {silent_s:.0f} s")])
        return _wait(
            f"canary step {step + 1}: {live.requests}/{spec.gates.min_canary_requests} requests"
        )
    problem = live_problem(spec.gates, live, world.baseline)
    if problem is not None:
        return Plan([RollBack(version, problem)])
    if step + 1 < len(steps):
        return Plan([SetCanary(version, steps[step + 1], step + 1)])
    return Plan([Promote(version)])
