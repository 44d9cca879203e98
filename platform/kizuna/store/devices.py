"""Fleet devices and their API tokens; only a SHA-256 of each token is stored."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from kizuna.store.models import Device, utcnow


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def register_device(session: Session, *, device_id: str) -> str:
    """Create a device (or rotate its token) and return the new token, shown only once."""
    token = secrets.token_urlsafe(32)
    device = session.get(Device, device_id)
    if device is None:
        session.add(Device(id=device_id, token_sha256=_digest(token)))
    else:
        device.token_sha256 = _digest(token)
    session.flush()
    return token


def authenticate_device(session: Session, *, token: str) -> str | None:
    """The id of the device holding ``token``, or None; marks the device as seen."""
    # Tokens are high-entropy random strings, so an indexed lookup by digest leaks
    # nothing useful; the compare_digest below guards the final equality anyway.
    digest = _digest(token)
    device = session.scalar(select(Device).where(Device.token_sha256 == digest))
    if device is None or not hmac.compare_digest(device.token_sha256, digest):
        return None
    device.last_seen_at = utcnow()
    session.flush()
    return device.id
