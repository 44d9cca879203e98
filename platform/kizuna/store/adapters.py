"""The adapter registry: versions of each persona's adapter and their rollout status."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from kizuna.store.models import Adapter, AdapterStatus, JsonDict


class AdapterNotFoundError(LookupError):
    """No adapter matches the persona (and version) asked for."""


def register_adapter(
    session: Session,
    *,
    persona: str,
    artifact_url: str,
    sha256: str,
    status: AdapterStatus = AdapterStatus.CANDIDATE,
    lineage: JsonDict | None = None,
    metrics: JsonDict | None = None,
) -> Adapter:
    """Add the persona's next version; registering as stable retires the previous stable."""
    latest = session.scalar(select(func.max(Adapter.version)).where(Adapter.persona == persona))
    adapter = Adapter(
        persona=persona,
        version=(latest or 0) + 1,
        status=AdapterStatus.CANDIDATE,
        artifact_url=artifact_url,
        sha256=sha256,
        lineage=lineage or {},
        metrics=metrics or {},
    )
    session.add(adapter)
    session.flush()
    if status != AdapterStatus.CANDIDATE:
        set_status(session, persona=persona, version=adapter.version, status=status)
    return adapter


def get_adapter(session: Session, *, persona: str, version: int) -> Adapter:
    """One version of one persona's adapter."""
    adapter = session.scalar(
        select(Adapter).where(Adapter.persona == persona, Adapter.version == version)
    )
    if adapter is None:
        raise AdapterNotFoundError(f"persona {persona!r} has no adapter version {version}")
    return adapter


def adapter_with_status(session: Session, *, persona: str, status: AdapterStatus) -> Adapter | None:
    """The newest version of the persona in ``status`` (there is at most one stable)."""
    return session.scalar(
        select(Adapter)
        .where(Adapter.persona == persona, Adapter.status == status)
        .order_by(Adapter.version.desc())
        .limit(1)
    )


def stable_adapter(session: Session, *, persona: str) -> Adapter:
    """The persona's stable version, or :class:`AdapterNotFoundError`."""
    adapter = adapter_with_status(session, persona=persona, status=AdapterStatus.STABLE)
    if adapter is None:
        raise AdapterNotFoundError(
            f"persona {persona!r} has no stable adapter; run `kizuna bootstrap` first"
        )
    return adapter


def resolve_adapter(session: Session, *, persona: str, version: int | None = None) -> Adapter:
    """The given version of the persona's adapter, or its stable one when none is given."""
    if version is not None:
        return get_adapter(session, persona=persona, version=version)
    return stable_adapter(session, persona=persona)


def list_adapters(session: Session, *, persona: str | None = None) -> Sequence[Adapter]:
    """Adapters ordered by persona and version, optionally of one persona."""
    query = select(Adapter).order_by(Adapter.persona, Adapter.version)
    if persona is not None:
        query = query.where(Adapter.persona == persona)
    return session.scalars(query).all()


def set_status(session: Session, *, persona: str, version: int, status: AdapterStatus) -> Adapter:
    """Move a version to ``status``; promoting to stable retires the current stable first."""
    adapter = get_adapter(session, persona=persona, version=version)
    if status == AdapterStatus.STABLE:
        current = adapter_with_status(session, persona=persona, status=AdapterStatus.STABLE)
        if current is not None and current.id != adapter.id:
            current.status = AdapterStatus.RETIRED
            # Flush the retirement before the promotion so the one-stable index holds
            # at every statement, not only at commit.
            session.flush()
    adapter.status = status
    session.flush()
    return adapter


def set_canary(session: Session, *, persona: str, version: int, weight: float) -> Adapter:
    """Serve ``version`` to ``weight`` of the persona's traffic; another canary steps back.

    Idempotent: setting the same canary and weight again changes nothing.
    """
    if not 0 <= weight <= 1:
        raise ValueError(f"a traffic share is in [0, 1], not {weight}")
    adapter = get_adapter(session, persona=persona, version=version)
    if adapter.status == AdapterStatus.STABLE:
        raise ValueError(f"{persona} v{version} is the stable version; it cannot be a canary")
    for other in session.scalars(
        select(Adapter).where(
            Adapter.persona == persona,
            Adapter.status == AdapterStatus.CANARY,
            Adapter.id != adapter.id,
        )
    ):
        other.status, other.traffic_weight = AdapterStatus.CANDIDATE, 0.0
    adapter.status, adapter.traffic_weight = AdapterStatus.CANARY, weight
    session.flush()
    return adapter


def promote(session: Session, *, persona: str, version: int) -> Adapter:
    """Make ``version`` stable (the old stable retires); idempotent."""
    adapter = set_status(session, persona=persona, version=version, status=AdapterStatus.STABLE)
    adapter.traffic_weight = 0.0
    session.flush()
    return adapter


def roll_back(session: Session, *, persona: str, version: int) -> Adapter:
    """Take ``version`` out of traffic and retire it; stable is untouched. Idempotent."""
    adapter = get_adapter(session, persona=persona, version=version)
    if adapter.status == AdapterStatus.STABLE:
        raise ValueError(f"{persona} v{version} is stable; promote another version instead")
    adapter.status, adapter.traffic_weight = AdapterStatus.RETIRED, 0.0
    session.flush()
    return adapter


def canary_adapter(session: Session, *, persona: str) -> Adapter | None:
    """The persona's canary with a non-zero traffic share, if it has one."""
    canary = adapter_with_status(session, persona=persona, status=AdapterStatus.CANARY)
    return canary if canary is not None and canary.traffic_weight > 0 else None
