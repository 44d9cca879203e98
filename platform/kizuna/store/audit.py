"""The audit log of operator actions."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from kizuna.store.models import AuditEvent, JsonDict


def record_audit(
    session: Session, *, actor: str, action: str, target: str, details: JsonDict | None = None
) -> AuditEvent:
    """Append one action to the log."""
    event = AuditEvent(actor=actor, action=action, target=target, details=details or {})
    session.add(event)
    session.flush()
    return event


def list_audit(session: Session, *, limit: int = 200) -> Sequence[AuditEvent]:
    """The newest actions first."""
    return session.scalars(select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)).all()
