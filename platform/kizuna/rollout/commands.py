"""``kizuna rollout …``: the embedded backend from the command line.

``start`` records a rollout and drives it to a final phase, printing every action as
it takes effect; a rollout left running (the command stopped, the machine restarted)
continues with ``resume``. ``promote`` and ``rollback`` decide a running canary by hand.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from kizuna.config import Settings
from kizuna.rollout.backends import local_view
from kizuna.rollout.local import LocalBackend, default_gates
from kizuna.rollout.reconcile import Plan
from kizuna.rollout.spec import RolloutPolicy, RolloutSpec
from kizuna.rollout.state import Phase, RolloutState
from kizuna.store import rollouts as rollout_store
from kizuna.store.db import open_store

rollout_app = typer.Typer(
    help="Move a candidate adapter through canary to stable (or back).", no_args_is_help=True
)
out = Console()
err = Console(stderr=True, soft_wrap=True)

Name = Annotated[str, typer.Argument(help="The rollout's name (see `kizuna rollout status`).")]
Interval = Annotated[float, typer.Option(min=0.1, help="Seconds between checks while waiting.")]


def _backend() -> tuple[Settings, LocalBackend]:
    settings = Settings()
    return settings, LocalBackend(settings, open_store(settings.resolved_database_url))


def _drive(backend: LocalBackend, name: str, interval_s: float) -> None:
    shown: list[str] = []

    def progress(state: RolloutState, plan: Plan) -> None:
        if state.message and (not shown or shown[-1] != state.message):
            shown.append(state.message)
            out.print(f"{datetime.now(UTC):%H:%M:%S}  {state.phase.value:<10} {state.message}")
        if plan.waiting_for:
            spinner.update(f"{name}: {plan.waiting_for}")

    with err.status(f"{name}: starting") as spinner:
        state = backend.run(name, interval_s=interval_s, progress=progress)
    if state.phase != Phase.PROMOTED:
        raise typer.Exit(1)


@rollout_app.command("start")
def start(
    persona: Annotated[str, typer.Option("--persona", "-p", help="Persona id.")],
    candidate: Annotated[
        int | None, typer.Option(min=1, help="A registered candidate version to roll out.")
    ] = None,
    retrain: Annotated[
        bool, typer.Option("--retrain", help="Retrain first and roll out what it registers.")
    ] = False,
    retrain_steps: Annotated[
        int | None, typer.Option(min=1, help="The retrain's optimiser steps.")
    ] = None,
    name: Annotated[str | None, typer.Option(help="Default: <persona>-<when>.")] = None,
    steps: Annotated[
        str, typer.Option(help="Canary traffic shares, comma-separated, rising.")
    ] = "0.1,0.5",
    min_requests: Annotated[
        int | None, typer.Option(min=1, help="Live requests per step before a decision.")
    ] = None,
    deadline_s: Annotated[
        float, typer.Option(min=1, help="Roll back after this long without canary traffic.")
    ] = 600.0,
    detach: Annotated[
        bool, typer.Option("--detach", help="Only record it; `resume` drives it.")
    ] = False,
    interval_s: Interval = 5.0,
    override_gates: Annotated[
        bool,
        typer.Option(
            "--override-gates",
            help="Let the candidate into traffic although offline gates fail (recorded in "
            "the spec); live gates still decide.",
        ),
    ] = False,
) -> None:
    """Roll out a candidate (or a fresh retrain) of PERSONA from its gates and live metrics."""
    if (candidate is None) == (not retrain):
        raise ValueError("give either --candidate VERSION or --retrain")
    settings, backend = _backend()
    gates = default_gates(settings, persona)
    if min_requests is not None:
        gates = gates.model_copy(update={"min_canary_requests": min_requests})
    retrain_config: dict[str, Any] = {"steps": retrain_steps} if retrain_steps else {}
    spec = RolloutSpec(
        name=name or f"{persona}-{datetime.now(UTC):%Y%m%d-%H%M%S}",
        persona=persona,
        candidate=candidate,
        retrain=retrain_config,
        gates=gates,
        policy=RolloutPolicy(
            steps=[float(s) for s in steps.split(",")], metrics_deadline_s=deadline_s
        ),
        override_gates=override_gates,
    )
    backend.start(spec)
    out.print(f"rollout {spec.name}: {persona} " + (f"v{candidate}" if candidate else "retrain"))
    if override_gates:
        out.print("offline gates overridden: a failing offline gate will not stop the canary")
    if not detach:
        _drive(backend, spec.name, interval_s)


@rollout_app.command("resume")
def resume(name: Name, interval_s: Interval = 5.0) -> None:
    """Unpause a rollout and drive it on from its recorded state."""
    _, backend = _backend()
    backend.decide(name, {"paused": False})
    _drive(backend, name, interval_s)


@rollout_app.command("pause")
def pause(name: Name) -> None:
    """Stop a rollout from taking any action until it is resumed."""
    _, backend = _backend()
    backend.decide(name, {"paused": True})
    out.print(f"rollout {name} paused")


def _decide(name: str, decision: str) -> None:
    _, backend = _backend()
    _, state = backend.load(name)
    if state.phase != Phase.CANARY:
        raise ValueError(f"rollout {name} is {state.phase.value}, not a running canary")
    backend.decide(name, {"decision": decision, "paused": False})
    state, _ = backend.step(name)
    out.print(f"rollout {name}: {state.phase.value} — {state.message}")


@rollout_app.command("promote")
def promote(name: Name) -> None:
    """Promote a running canary to stable now."""
    _decide(name, "promote")


@rollout_app.command("rollback")
def rollback(name: Name) -> None:
    """Take a running canary out of traffic now; stable is untouched."""
    _decide(name, "rollback")


@rollout_app.command("status")
def show_status(
    persona: Annotated[
        str | None, typer.Option("--persona", "-p", help="Only this persona.")
    ] = None,
) -> None:
    """Every rollout with its phase, candidate, traffic share and last action."""
    settings = Settings()
    table = Table("name", "persona", "phase", "candidate", "canary share", "last action")
    with open_store(settings.resolved_database_url)() as session:
        views = [local_view(row) for row in rollout_store.list_rollouts(session, persona=persona)]
    for view in views:
        table.add_row(
            view.name,
            view.persona,
            view.phase,
            f"v{view.candidate}" if view.candidate else "-",
            f"{view.weight:.0%}" if view.phase == Phase.CANARY else "-",
            view.message,
        )
    out.print(table)
