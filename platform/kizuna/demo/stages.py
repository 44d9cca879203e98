"""The demo's stages on the console: one line per finished stage, a live line for running ones.

Each stage that runs a ``kizuna`` command runs it as a subprocess (the command a user
would type), its output kept in a log file and its newest line shown while it runs, so a
long stage shows progress and a failed one points at everything it printed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.text import Text

from kizuna.processes import end_session


class StageFailed(RuntimeError):
    """A stage did not finish; the message says why and where its log is."""


class Stage:
    """A running stage: shows notes while it runs and one summary line when it ends."""

    def __init__(self, board: StageBoard, name: str, task: TaskID) -> None:
        self.name = name
        self._board = board
        self._task = task
        self.summary = ""

    def note(self, text: str) -> None:
        """Show ``text`` (one line) as what the stage is doing now."""
        line = " ".join(text.split())
        self._board.progress.update(self._task, note=line[:100])

    def done(self, summary: str) -> None:
        """What the stage achieved, printed when it ends."""
        self.summary = summary


class StageBoard:
    """Stages of a long job, each timed; the wall times are kept for the closing table."""

    def __init__(self, console: Console, log_dir: Path) -> None:
        self.console = console
        self.log_dir = log_dir
        self.seconds: dict[str, float] = {}
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            TimeElapsedColumn(),
            TextColumn("{task.fields[note]}", style="dim"),
            console=console,
            transient=True,
        )

    def __enter__(self) -> StageBoard:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.progress.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.progress.stop()

    @contextmanager
    def stage(self, name: str) -> Iterator[Stage]:
        """Run the block as stage ``name``; an exception marks it failed and propagates."""
        task = self.progress.add_task(name, note="")
        stage = Stage(self, name, task)
        started = time.monotonic()
        try:
            yield stage
        except BaseException:
            self.progress.remove_task(task)
            self.seconds[name] = time.monotonic() - started
            self.console.print(Text.assemble(("✗ ", "bold red"), (name, "bold"), " failed"))
            raise
        self.progress.remove_task(task)
        self.seconds[name] = elapsed = time.monotonic() - started
        self.console.print(
            Text.assemble(
                ("✓ ", "bold green"),
                (name, "bold"),
                f" ({elapsed:.0f} s)",
                (f" — {stage.summary}" if stage.summary else "", ""),
            )
        )

    def log_path(self, name: str) -> Path:
        """Where the output of the command run for stage ``name`` is kept."""
        return self.log_dir / f"{name.replace(' ', '-')}.log"


def kizuna_command(*args: str) -> list[str]:
    """``kizuna ARGS`` with this interpreter, whatever PATH says."""
    return [sys.executable, "-m", "kizuna", *args]


def run_logged(
    stage: Stage, argv: Sequence[str], log: Path, *, env: dict[str, str] | None = None
) -> None:
    """Run ``argv`` to the end, its output into ``log``, its newest line on the board."""
    with log.open("w", encoding="utf-8") as sink:
        process = subprocess.Popen(
            list(argv),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            encoding="utf-8",
            errors="replace",
            env={**os.environ, **(env or {}), "COLUMNS": "120"},
        )
        assert process.stdout is not None
        for line in process.stdout:
            sink.write(line)
            sink.flush()
            if line.strip():
                stage.note(line)
        status = process.wait()
    if status != 0:
        tail = "".join(log.read_text(encoding="utf-8").splitlines(keepends=True)[-15:])
        raise StageFailed(f"{' '.join(argv[2:])} exited with {status}; log: {log}\n{tail}")


class BackgroundProcess:
    """A long-running command (the server) with its output in a log; stopped with SIGTERM."""

    def __init__(self, argv: Sequence[str], log: Path, *, env: dict[str, str]) -> None:
        self.log = log
        self._sink = log.open("w", encoding="utf-8")
        self.process = subprocess.Popen(
            list(argv),
            stdout=self._sink,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
            start_new_session=True,
        )

    def running(self) -> bool:
        """Whether the process is still alive."""
        return self.process.poll() is None

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM, then SIGKILL after ``timeout_s``; the exit status. Whatever it left in
        its session (Ray's processes, if it died before stopping them) is ended too."""
        if self.running():
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        end_session(self.process.pid, grace_s=10.0)
        self._sink.close()
        return self.process.returncode
