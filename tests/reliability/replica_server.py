"""One serving replica without Ray, as a process of its own that a test can kill.

Run as ``python replica_server.py PORT``; settings come from ``KIZUNA_*`` variables.
"""

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from starlette.applications import Starlette
from starlette.routing import Mount

from kizuna.config import Settings
from support import in_process_replica

if __name__ == "__main__":
    replica = in_process_replica(Settings())

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        yield
        # uvicorn re-raises SIGTERM once it has shut down, so code after uvicorn.run
        # never runs; the lifespan's end is where a graceful stop can still flush.
        replica.close()

    app = Starlette(routes=[Mount("/", app=replica.app)], lifespan=lifespan)
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
