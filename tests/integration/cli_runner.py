"""Run the ``kizuna`` command as a user does: a real process, its output and exit code."""

import os
import subprocess
import sys


def kizuna(
    *args: str, env: dict[str, str] | None = None, stdin: str = "", timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kizuna", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )
