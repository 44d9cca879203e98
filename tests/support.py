"""Small pieces several test modules need: quiet progress, a free port, a local replica."""

import asyncio
import socket

from kizuna.config import Settings
from kizuna.model.engine import EngineRequest, build_engine
from kizuna.model.generation import Generation
from kizuna.serve.runtime import Replica, build_replica


class QuietProgress:
    """Bootstrap progress that reports nowhere."""

    def stage(self, description: str, total: int | None = None) -> None: ...
    def advance(self, steps: int = 1, *, note: str = "") -> None: ...


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def in_process_replica(settings: Settings) -> Replica:
    """One serving replica (real engine, store, journal) without Ray: each request runs
    alone on a worker thread in place of Serve's batching."""
    engine = build_engine(settings)

    async def run_one(request: EngineRequest) -> Generation:
        return (await asyncio.to_thread(engine.generate, [request]))[0]

    return build_replica(settings, engine, run_one)
