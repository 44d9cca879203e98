"""Rollouts of the embedded backend: spec, recorded state and the events that moved it."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from kizuna.store.models import JsonDict, Rollout, utcnow


class RolloutExistsError(ValueError):
    """A rollout with that name exists already."""


def create_rollout(session: Session, *, name: str, persona: str, spec: JsonDict) -> Rollout:
    """A new rollout with an empty state."""
    if session.scalar(select(Rollout.id).where(Rollout.name == name)) is not None:
        raise RolloutExistsError(f"a rollout named {name!r} exists already")
    rollout = Rollout(name=name, persona=persona, spec=spec, state={}, events=[])
    session.add(rollout)
    session.flush()
    return rollout


def get_rollout(session: Session, *, name: str) -> Rollout:
    """The rollout called ``name``."""
    rollout = session.scalar(select(Rollout).where(Rollout.name == name))
    if rollout is None:
        raise LookupError(f"no rollout named {name!r}")
    return rollout


def list_rollouts(session: Session, *, persona: str | None = None) -> Sequence[Rollout]:
    """Rollouts, newest first."""
    query = select(Rollout).order_by(Rollout.id.desc())
    if persona is not None:
        query = query.where(Rollout.persona == persona)
    return session.scalars(query).all()


def record_state(
    session: Session, *, name: str, state: JsonDict, event: JsonDict | None = None
) -> Rollout:
    """Save the rollout's state, appending ``event`` to its history."""
    rollout = get_rollout(session, name=name)
    rollout.state = state
    if event is not None:
        rollout.events = [*rollout.events, {"at": utcnow().isoformat(), **event}]
    session.flush()
    return rollout


def update_spec(session: Session, *, name: str, changes: JsonDict) -> Rollout:
    """Change fields of the rollout's spec (pause, a manual decision)."""
    rollout = get_rollout(session, name=name)
    rollout.spec = {**rollout.spec, **changes}
    session.flush()
    return rollout
