"""Starting the dashboard: its token, its store, its backend, and uvicorn."""

from __future__ import annotations

from fastapi import FastAPI

from kizuna.config import Settings
from kizuna.dashboard.app import build_app
from kizuna.dashboard.auth import Access
from kizuna.rollout.backends import BACKENDS
from kizuna.serve.tokens import stored_token
from kizuna.store.db import open_store

OPS_TOKEN_FILE = "ops-token"


def ops_token(settings: Settings) -> tuple[str, str | None]:
    """The ops token (KIZUNA_OPS_TOKEN, else the data dir's, made once); and the token
    again when it was generated just now, to show it once."""
    if settings.ops_token is not None:
        return settings.ops_token.get_secret_value(), None
    return stored_token(settings.data_dir / OPS_TOKEN_FILE)


def dashboard_app(settings: Settings) -> tuple[FastAPI, str | None]:
    """The configured dashboard, and a token generated for it just now (if any)."""
    token, created = ops_token(settings)
    sessions = open_store(settings.resolved_database_url)
    backend = BACKENDS[settings.rollout_backend](settings, sessions)
    app = build_app(
        access=Access(token, user_header=settings.dashboard_user_header),
        sessions=sessions,
        backend=backend,
        personas_dir=settings.resolved_personas_dir,
        drive_every_s=settings.rollout_interval_s,
    )
    return app, created
