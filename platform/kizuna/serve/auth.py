"""Bearer-token authentication: static tokens from settings, device tokens from the store."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from pydantic import SecretStr
from sqlalchemy.orm import Session, sessionmaker

from kizuna.store.db import transaction
from kizuna.store.devices import authenticate_device


@dataclass(frozen=True)
class Caller:
    """Who made a request: a device id, or None for a static (operator/app) token."""

    device_id: str | None


class Authenticator:
    """Checks ``Authorization: Bearer <token>`` headers."""

    def __init__(self, static_tokens: list[SecretStr], sessions: sessionmaker[Session]) -> None:
        self._static = [token.get_secret_value().encode() for token in static_tokens]
        self._sessions = sessions

    def authenticate(self, header: str | None) -> Caller | None:
        """The caller, or None when the header carries no valid token."""
        if not header or not header.startswith("Bearer "):
            return None
        token = header.removeprefix("Bearer ").strip()
        if not token:
            return None
        encoded = token.encode()
        # Compare against every static token so timing does not reveal which one matched.
        if sum(hmac.compare_digest(encoded, known) for known in self._static):
            return Caller(device_id=None)
        with transaction(self._sessions) as session:
            device = authenticate_device(session, token=token)
        return Caller(device_id=device) if device else None
