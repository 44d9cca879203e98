"""The API token of an embedded install, generated once when none is configured."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from pydantic import SecretStr

from kizuna.config import Settings

TOKEN_FILE = "api-token"


def token_path(settings: Settings) -> Path:
    """Where the generated token is kept (mode 0600)."""
    return settings.data_dir / TOKEN_FILE


def ensure_api_token(settings: Settings) -> tuple[Settings, str | None]:
    """Settings with a usable token, and the token if it was generated just now.

    With tokens configured (KIZUNA_API_TOKENS) nothing changes. Otherwise the token in
    the data dir is used, or a new one is written there, readable by its owner only.
    """
    if settings.api_tokens:
        return settings, None
    token, created = stored_token(token_path(settings))
    return settings.model_copy(update={"api_tokens": [SecretStr(token)]}), created


def stored_token(path: Path) -> tuple[str, str | None]:
    """The token kept in ``path``, written there first (mode 0600) if missing; the second
    value is the token when it was created just now."""
    created = None
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        created = secrets.token_urlsafe(32)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(created)
    return path.read_text().strip(), created


def client_token(settings: Settings) -> str | None:
    """The token a CLI client sends: the first configured one, else the data dir's."""
    if settings.api_tokens:
        return settings.api_tokens[0].get_secret_value()
    path = token_path(settings)
    return path.read_text().strip() if path.is_file() else None
