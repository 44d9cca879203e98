"""Building a replica's serving components from settings (shared by Ray Serve and tests)."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import FastAPI

from kizuna.config import Settings
from kizuna.model.engine import Engine
from kizuna.serve.adapters import AdapterRouter
from kizuna.serve.auth import Authenticator
from kizuna.serve.http import create_app
from kizuna.serve.journal import InteractionJournal
from kizuna.serve.metrics import ServeMetrics
from kizuna.serve.service import InferenceService, RunOne
from kizuna.store.db import make_engine, session_factory, upgrade


@dataclass
class Replica:
    """Everything one serving replica holds."""

    engine: Engine
    service: InferenceService
    app: FastAPI

    def close(self) -> None:
        """Flush acknowledged interactions into the store."""
        self.service.journal.close()


def build_replica(settings: Settings, engine: Engine, run_one: RunOne) -> Replica:
    """Wire the store, journal, router, service and HTTP app around ``engine``."""
    database = make_engine(settings.resolved_database_url)
    if database.dialect.name == "sqlite":
        upgrade(database)  # embedded mode; in clusters the chart's hook Job migrates
    sessions = session_factory(database)
    journal = InteractionJournal(settings.data_dir / "journal", sessions)
    journal.start()
    metrics = ServeMetrics()
    router = AdapterRouter(
        engine,
        sessions,
        cache_dir=settings.adapter_cache_dir,
        refresh_s=settings.serve_refresh_s,
    )
    service = InferenceService(
        router=router,
        journal=journal,
        sessions=sessions,
        metrics=metrics,
        run_one=run_one,
        tokenizer=engine.tokenizer,
        personas_dir=settings.resolved_personas_dir,
        max_input_chars=settings.max_input_chars,
        max_in_flight=settings.serve_max_in_flight,
        cache_size=settings.serve_cache_size,
    )
    app = create_app(service, Authenticator(settings.api_tokens, sessions))
    return Replica(engine=engine, service=service, app=app)
