"""The registry side of a rollout's actions, shared by the embedded backend and the
operator: what serves a persona after a canary step, a promotion or a rollback."""

from __future__ import annotations

from sqlalchemy.orm import Session

from kizuna.rollout.actions import Action, Promote, RollBack, SetCanary
from kizuna.store import adapters as adapter_store


def move_traffic(session: Session, persona: str, action: Action) -> bool:
    """Make the registry serve what ``action`` asks (idempotently); False when the action
    does not move traffic."""
    match action:
        case SetCanary(version, weight, _):
            adapter_store.set_canary(session, persona=persona, version=version, weight=weight)
        case Promote(version):
            adapter_store.promote(session, persona=persona, version=version)
        case RollBack(version):
            adapter_store.roll_back(session, persona=persona, version=version)
        case _:
            return False
    return True
