"""The rollout's reconcile logic, driven against a simulated world, one table row a story."""

from __future__ import annotations

from collections.abc import Callable
from copy import deepcopy
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

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
from kizuna.rollout.driver import step
from kizuna.rollout.reconcile import reconcile
from kizuna.rollout.spec import Gates, RolloutPolicy, RolloutSpec
from kizuna.rollout.state import (
    CandidateObservation,
    JobObservation,
    JobPhase,
    LiveMetrics,
    Observed,
    Phase,
    RolloutState,
    Traffic,
)

T0 = datetime(2026, 11, 23, 12, tzinfo=UTC)
GOOD_REPORT = {
    "style_accuracy": 0.86,
    "content_preservation": 0.93,
    "latency_p95_ms": 180.0,
    "gates": {"strength_monotonic": True},
}
HEALTHY = LiveMetrics(requests=25, entropy_mean=1.1, latency_p95_ms=200.0)
BASELINE = LiveMetrics(requests=400, entropy_mean=1.0, latency_p95_ms=190.0)


@dataclass
class World:
    """A registry, a job scheduler and an interaction log, as a backend would see them."""

    stable: int = 3
    canary: int | None = None
    weight: float = 0.0
    job_outcome: JobPhase = JobPhase.SUCCEEDED
    job_candidate: int | None = 4
    report: dict[str, Any] = field(default_factory=lambda: dict(GOOD_REPORT))
    live: Callable[[int, float], LiveMetrics] = lambda minute, weight: HEALTHY
    jobs_created: list[str] = field(default_factory=list)
    retired: set[int] = field(default_factory=set)
    served: bool = False  # the interaction log holds the candidate's requests
    minute: int = 0

    def observe(self) -> Observed:
        job = None
        if self.jobs_created:
            job = JobObservation(
                self.job_outcome,
                self.job_candidate if self.job_outcome == JobPhase.SUCCEEDED else None,
                "worker OOM" if self.job_outcome == JobPhase.FAILED else "",
            )
        candidate = None
        if self.job_candidate is not None:
            candidate = CandidateObservation(4, self.report, retired=4 in self.retired)
        return Observed(
            now=T0 + timedelta(minutes=self.minute),
            traffic=Traffic(self.stable, self.canary, self.weight),
            job=job,
            candidate=candidate,
            canary=self.live(self.minute, self.weight) if self.served else LiveMetrics(),
            baseline=BASELINE,
        )

    def effect(self, action: Action) -> None:
        match action:
            case CreateJob(name):
                if name not in self.jobs_created:  # idempotent, like a RayJob create + 409
                    self.jobs_created.append(name)
            case SetCanary(version, weight, _):
                self.canary, self.weight, self.served = version, weight, True
            case Promote(version):
                self.stable, self.canary, self.weight = version, None, 0.0
            case RollBack(version):
                self.canary, self.weight = None, 0.0
                self.retired.add(version)


def drive(
    spec: RolloutSpec, world: World, *, crash_after_effect: bool = False, limit: int = 100
) -> tuple[RolloutState, list[Action]]:
    """Run the rollout to a final phase; optionally lose every record once (a restart)."""
    state, taken = RolloutState(), []
    crashed: set[Action] = set()
    for _ in range(limit):
        if state.phase.final:
            return state, taken
        saved = state

        def save(new: RolloutState, action: Action) -> None:
            if crash_after_effect and action not in crashed:
                crashed.add(action)
                raise RuntimeError("backend killed before recording")
            taken.append(action)

        try:
            state, plan = step(spec, saved, world.observe(), effect=world.effect, save=save)
        except RuntimeError:
            state, plan = saved, None  # restarted from the last record
        if plan is not None and not plan.actions:
            world.minute += 1
    raise AssertionError(f"no final phase after {limit} passes: {state}")


def degrading(minute: int, weight: float) -> LiveMetrics:
    return replace(HEALTHY, entropy_mean=2.4)


def silent(minute: int, weight: float) -> LiveMetrics:
    return LiveMetrics(requests=3, entropy_mean=1.0, last_request_at=T0)


def slow(minute: int, weight: float) -> LiveMetrics:
    return replace(HEALTHY, latency_p95_ms=900.0)


RETRAIN = RolloutSpec(name="tsundere-7", persona="tsundere")
JOB = RETRAIN.job_name
EXISTING = RolloutSpec(name="tsundere-8", persona="tsundere", candidate=4)
STORIES = [
    pytest.param(
        RETRAIN,
        World(),
        [
            CreateJob("tsundere-7-retrain"),
            RecordCandidate(4),
            SetCanary(4, 0.1, 0),
            SetCanary(4, 0.5, 1),
            Promote(4),
        ],
        Phase.PROMOTED,
        (4, None),
        id="retrain-to-promotion",
    ),
    pytest.param(
        EXISTING,
        World(),
        [RecordCandidate(4), SetCanary(4, 0.1, 0), SetCanary(4, 0.5, 1), Promote(4)],
        Phase.PROMOTED,
        (4, None),
        id="existing-candidate-to-promotion",
    ),
    pytest.param(
        EXISTING,
        World(report={**GOOD_REPORT, "style_accuracy": 0.41}),
        [RecordCandidate(4), Reject(("style_accuracy 0.41 < 0.8",))],
        Phase.REJECTED,
        (3, None),
        id="offline-gate-fails-never-reaches-traffic",
    ),
    pytest.param(
        EXISTING,
        World(report={**GOOD_REPORT, "gates": {"int8_style": False}}),
        [RecordCandidate(4), Reject(("report gate int8_style failed",))],
        Phase.REJECTED,
        (3, None),
        id="report-gate-fails",
    ),
    pytest.param(
        EXISTING.model_copy(update={"override_gates": True}),
        World(report={**GOOD_REPORT, "style_accuracy": 0.41}),
        [RecordCandidate(4), SetCanary(4, 0.1, 0), SetCanary(4, 0.5, 1), Promote(4)],
        Phase.PROMOTED,
        (4, None),
        id="offline-gates-overridden-by-an-operator",
    ),
    pytest.param(
        EXISTING,
        World(live=degrading),
        [
            RecordCandidate(4),
            SetCanary(4, 0.1, 0),
            RollBack(
                4,
                "live mean entropy 2.40 is 1.40 nats above stable's 1.00 (max drift 0.5)",
            ),
        ],
        Phase.ROLLED_BACK,
        (3, None),
        id="canary-degrades-entropy",
    ),
    pytest.param(
        EXISTING,
        World(live=slow),
        [RecordCandidate(4), SetCanary(4, 0.1, 0), RollBack(4, "live latency p95 900 ms > 500 ms")],
        Phase.ROLLED_BACK,
        (3, None),
        id="canary-degrades-latency",
    ),
    pytest.param(
        EXISTING,
        World(live=silent),
        [RecordCandidate(4), SetCanary(4, 0.1, 0), RollBack(4, "no canary traffic for 660 s")],
        Phase.ROLLED_BACK,
        (3, None),
        id="canary-metrics-stop",
    ),
    pytest.param(
        RETRAIN,
        World(job_outcome=JobPhase.FAILED),
        [
            CreateJob("tsundere-7-retrain"),
            MarkFailed("retrain job tsundere-7-retrain failed: worker OOM"),
        ],
        Phase.FAILED,
        (3, None),
        id="rayjob-fails",
    ),
    pytest.param(
        RETRAIN,
        World(job_candidate=None),
        [
            CreateJob("tsundere-7-retrain"),
            MarkFailed("retrain job tsundere-7-retrain registered no candidate"),
        ],
        Phase.FAILED,
        (3, None),
        id="job-without-candidate",
    ),
]


@pytest.mark.parametrize(("spec", "world", "actions", "phase", "traffic"), STORIES)
def test_story(
    spec: RolloutSpec,
    world: World,
    actions: list[Action],
    phase: Phase,
    traffic: tuple[int, int | None],
) -> None:
    state, taken = drive(spec, world := deepcopy(world))
    assert taken == actions
    assert state.phase == phase
    assert (world.stable, world.canary) == traffic


@pytest.mark.parametrize(("spec", "world", "actions", "phase", "traffic"), STORIES)
def test_a_restart_after_every_effect_repeats_nothing(
    spec: RolloutSpec,
    world: World,
    actions: list[Action],
    phase: Phase,
    traffic: tuple[int, int | None],
) -> None:
    state, taken = drive(spec, world := deepcopy(world), crash_after_effect=True)
    assert taken == actions  # the same transitions, each recorded once
    assert state.phase == phase
    assert (world.stable, world.canary) == traffic
    assert len(world.jobs_created) == len(set(world.jobs_created)) <= 1


def test_a_canary_waits_for_enough_requests_before_stepping() -> None:
    state = RolloutState(
        phase=Phase.CANARY, candidate=4, step=0, weight=0.1, step_started_at=T0, baseline=3
    )
    world = Observed(
        now=T0 + timedelta(minutes=5),
        traffic=Traffic(3, 4, 0.1),
        canary=LiveMetrics(requests=19, entropy_mean=9.0, last_request_at=T0),
        baseline=BASELINE,
    )
    plan = reconcile(EXISTING, state, world)
    assert plan.actions == []  # 19 < 20: even a bad mean decides nothing yet
    assert plan.waiting_for == "canary step 1: 19/20 requests"


def test_a_lost_canary_setting_is_put_back_before_metrics_are_judged() -> None:
    state = RolloutState(
        phase=Phase.CANARY, candidate=4, step=1, weight=0.5, step_started_at=T0, baseline=3
    )
    world = Observed(now=T0, traffic=Traffic(3, 4, 0.1), canary=HEALTHY, baseline=BASELINE)
    assert reconcile(EXISTING, state, world).actions == [SetCanary(4, 0.5, 1)]


@pytest.mark.parametrize(
    ("decision", "expected"),
    [("promote", Promote(4)), ("rollback", RollBack(4, "rolled back by an operator"))],
)
def test_an_operator_decides_a_running_canary(decision: str, expected: Action) -> None:
    state = RolloutState(phase=Phase.CANARY, candidate=4, step=0, weight=0.1, step_started_at=T0)
    spec = EXISTING.model_copy(update={"decision": decision})
    world = Observed(now=T0, traffic=Traffic(3, 4, 0.1))
    assert reconcile(spec, state, world).actions == [expected]


def test_paused_and_final_rollouts_do_nothing() -> None:
    paused = EXISTING.model_copy(update={"paused": True})
    assert reconcile(paused, RolloutState(), Observed(now=T0)).waiting_for == "paused"
    done = RolloutState(phase=Phase.PROMOTED, candidate=4)
    assert reconcile(EXISTING, done, Observed(now=T0)).actions == []


@pytest.mark.parametrize(
    "policy",
    [{"steps": []}, {"steps": [0.5, 0.2]}, {"steps": [0.1, 1.0]}, {"metricsDeadlineS": 0}],
)
def test_bad_policies_are_refused(policy: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        RolloutPolicy.model_validate(policy)


def test_specs_read_the_custom_resources_camel_case() -> None:
    spec = RolloutSpec.model_validate(
        {
            "name": "r1",
            "persona": "cool",
            "gates": {"minStyleAccuracy": 0.7, "minCanaryRequests": 5},
            "policy": {"steps": [0.25], "metricsDeadlineS": 60},
        }
    )
    assert spec.gates == Gates(min_style_accuracy=0.7, min_canary_requests=5)
    assert spec.policy.steps == [0.25]
    with pytest.raises(ValidationError):
        RolloutSpec.model_validate({"name": "r1", "persona": "cool", "gatez": {}})
