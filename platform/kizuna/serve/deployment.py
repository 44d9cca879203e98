"""The Ray Serve deployment: one replica = one engine with many adapters behind the API."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import FastAPI
from ray import serve

from kizuna.config import Settings
from kizuna.model.engine import EngineRequest, build_engine
from kizuna.model.generation import Generation
from kizuna.serve.runtime import build_replica


class KizunaServer:
    """Loads the engine once; batches concurrent requests across adapters."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = Settings(**settings)
        self.engine = build_engine(self.settings)
        self.replica = build_replica(self.settings, self.engine, self.generate)
        self.reconfigure({})

    def reconfigure(self, config: dict[str, Any]) -> None:
        """Live knobs (Serve ``user_config``): batch size and wait."""
        size = int(config.get("max_batch_size", self.settings.serve_max_batch_size))
        wait_ms = float(config.get("batch_wait_ms", self.settings.serve_batch_wait_ms))
        # Ray's typing presents the batched method as a per-request call; the batch
        # knobs live on the wrapper it really is.
        batcher: Any = self.generate
        batcher.set_max_batch_size(size)
        batcher.set_batch_wait_timeout_s(wait_ms / 1000)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def generate(self, requests: list[EngineRequest]) -> list[Generation]:
        """Run concurrent requests, whatever their adapters, as one engine batch."""
        metrics = self.replica.service.metrics
        metrics.batch_size.observe(len(requests))
        metrics.batch_personas.observe(len({tuple(sorted(r.mix)) for r in requests}))
        return await asyncio.to_thread(self.engine.generate, requests)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return self.replica.app

    async def __del__(self) -> None:
        self.replica.close()


KizunaDeployment = serve.deployment(name="kizuna", graceful_shutdown_timeout_s=30)(
    serve.ingress()(KizunaServer)
)


def application(settings: Settings) -> serve.Application:
    """The bound application for ``serve.run``."""
    values = settings.model_dump(mode="json")
    values["api_tokens"] = [t.get_secret_value() for t in settings.api_tokens]
    values["ops_token"] = settings.ops_token.get_secret_value() if settings.ops_token else None
    return KizunaDeployment.options(num_replicas=settings.serve_replicas).bind(values)


def build(args: dict[str, Any]) -> serve.Application:
    """Application builder for a Serve config file (KubeRay's ``serveConfigV2``).

    Settings come from the environment and ``KIZUNA_CONFIG`` of the Ray pods; ``args``
    (the config's ``args:``) may override any of them by name.
    """
    return application(Settings(**args))
