"""One serving replica without Ray, as a process of its own that a test can kill.

Run as ``python replica_server.py PORT``; settings come from ``KIZUNA_*`` variables.
"""

import sys

import uvicorn

from kizuna.config import Settings
from support import in_process_replica

if __name__ == "__main__":
    replica = in_process_replica(Settings())
    try:
        uvicorn.run(replica.app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
    finally:
        replica.close()
