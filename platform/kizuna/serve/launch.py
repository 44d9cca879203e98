"""Starting and stopping the serving app on a local (or given) Ray cluster."""

from __future__ import annotations

import ray
from ray import serve

from kizuna.config import Settings
from kizuna.serve.deployment import application

APP_NAME = "kizuna"


def start(settings: Settings, *, ray_address: str | None = None) -> str:
    """Deploy the app and return its base URL once it is ready to answer."""
    ray.init(
        address=ray_address, ignore_reinit_error=True, include_dashboard=False, log_to_driver=False
    )
    serve.start(http_options={"host": settings.serve_host, "port": settings.serve_port})
    serve.run(application(settings), name=APP_NAME, route_prefix="/", blocking=False)
    return f"http://{settings.serve_host}:{settings.serve_port}"


def stop() -> None:
    """Drain the app (replicas flush their journals) and stop local Ray."""
    serve.shutdown()
    ray.shutdown()
