"""One pass of a rollout, shared by every backend: reconcile, take effect, record."""

from __future__ import annotations

from collections.abc import Callable

from kizuna.rollout.actions import Action, advance
from kizuna.rollout.reconcile import Plan, reconcile
from kizuna.rollout.spec import RolloutSpec
from kizuna.rollout.state import Observed, RolloutState

Effect = Callable[[Action], None]
Save = Callable[[RolloutState, Action], None]


def step(
    spec: RolloutSpec, state: RolloutState, world: Observed, *, effect: Effect, save: Save
) -> tuple[RolloutState, Plan]:
    """Reconcile once; each action takes effect and is then recorded (effect first, so
    a crash in between repeats an idempotent effect instead of recording one never made).
    """
    plan = reconcile(spec, state, world)
    for action in plan.actions:
        effect(action)
        state = advance(state, action, now=world.now, stable=world.traffic.stable)
        save(state, action)
    return state, plan
