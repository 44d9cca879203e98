"""Alembic environment: runs migrations on the engine handed over by ``kizuna.store.db``."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Engine

from kizuna.store.models import Base

engine: Engine = context.config.attributes["engine"]
with engine.begin() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        # SQLite cannot ALTER most things in place; batch mode rebuilds tables instead.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    context.run_migrations()
