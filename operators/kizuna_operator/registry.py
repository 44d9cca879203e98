"""The adapter registry as a Personality declares it and as it is (what Serve reads)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from kizuna.rollout.observe import current_traffic
from kizuna.rollout.resources import AdapterVersions, PersonalityStatus
from kizuna.store import adapters as adapter_store
from kizuna.store.models import AdapterStatus


def apply_adapters(session: Session, persona: str, wanted: AdapterVersions) -> None:
    """Make the registry serve what ``wanted`` pins; unset fields leave it as it is.

    A pinned stable version is promoted (how an operator rolls back by hand); a canary
    with a share is set; a canary the spec no longer names is taken out of traffic.
    """
    stable = adapter_store.adapter_with_status(
        session, persona=persona, status=AdapterStatus.STABLE
    )
    if wanted.stable is not None and (stable is None or stable.version != wanted.stable):
        adapter_store.promote(session, persona=persona, version=wanted.stable)
    canary = adapter_store.canary_adapter(session, persona=persona)
    if wanted.canary is not None and wanted.canary_weight > 0:
        adapter_store.set_canary(
            session, persona=persona, version=wanted.canary, weight=wanted.canary_weight
        )
    elif canary is not None and canary.version != wanted.stable:
        adapter_store.roll_back(session, persona=persona, version=canary.version)


def serving(session: Session, persona: str) -> PersonalityStatus:
    """What the registry serves for ``persona`` now, as the Personality's status."""
    traffic = current_traffic(session, persona)
    return PersonalityStatus(
        stable=traffic.stable, canary=traffic.canary, canary_weight=traffic.canary_weight
    )
