"""A durable write-behind journal of interactions: nothing acknowledged is lost.

Serving must not wait on the database, yet an acknowledged interaction must survive a
crash. So each interaction is appended to a local segment file and fsynced before the
response goes out, and a background thread moves whole segments into the store.
Rows are keyed by their public id, so a segment ingested twice (a crash between commit
and delete) is stored once.

A live writer holds an exclusive ``flock`` on its segment. At start-up, any segment
nobody holds (left by a killed replica) is replayed into the store, so restarting a
replica on the same data directory recovers what its predecessor acknowledged.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import IO

from sqlalchemy.orm import Session, sessionmaker

from kizuna.store.db import transaction
from kizuna.store.interactions import InteractionRecord, log_interaction

log = logging.getLogger(__name__)
_FIELDS = set(InteractionRecord.__dataclass_fields__) - {
    "entropy_mean",
    "entropy_max",
    "margin_mean",
}


class InteractionJournal:
    """Append interactions durably now; store them in the database shortly after."""

    def __init__(
        self, directory: Path, sessions: sessionmaker[Session], *, interval_s: float = 0.2
    ) -> None:
        self.directory = directory
        self._sessions = sessions
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._pending = 0
        self._drained = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._prefix = uuid.uuid4().hex
        self._sequence = 0
        self._segment: IO[str] | None = None
        # Segments closed for writing, with their line counts, oldest first; each stays
        # here (and locked) until its rows are committed.
        self._sealed: list[tuple[IO[str], int]] = []
        self._thread = threading.Thread(target=self._run, name="interaction-journal", daemon=True)

    def start(self) -> None:
        """Replay orphaned segments, open a segment of our own, start the mover."""
        self.directory.mkdir(parents=True, exist_ok=True)
        for path in sorted(self.directory.glob("*.jsonl")):
            self._ingest_if_orphaned(path)
        with self._lock:
            self._segment = self._open_segment()
        self._thread.start()

    def append(self, record: InteractionRecord) -> None:
        """Durably record one interaction; returns once it is on disk."""
        line = json.dumps({k: v for k, v in asdict(record).items() if k in _FIELDS})
        with self._lock:
            if self._segment is None:
                raise RuntimeError("journal is not started")
            self._segment.write(line + "\n")
            self._segment.flush()
            os.fsync(self._segment.fileno())
            self._pending += 1

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every appended interaction is in the store; False on timeout."""
        with self._lock:
            return self._drained.wait_for(lambda: self._pending == 0, timeout=timeout_s)

    def close(self) -> None:
        """Move what is left into the store and stop."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._rotate_and_ingest()
        with self._lock:
            if self._segment is not None:
                path = Path(self._segment.name)
                self._segment.close()
                self._segment = None
                if path.stat().st_size == 0:
                    path.unlink()

    def _open_segment(self) -> IO[str]:
        self._sequence += 1
        path = self.directory / f"{self._prefix}-{self._sequence:08d}.jsonl"
        handle = path.open("a", encoding="utf-8")
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        return handle

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self._rotate_and_ingest()
            except Exception:  # the database is down: keep the segment, retry next tick
                log.exception("moving interactions into the store failed; will retry")

    def _rotate_and_ingest(self) -> None:
        with self._lock:
            if self._segment is not None and self._segment.tell() > 0:
                counted = sum(count for _, count in self._sealed)
                self._sealed.append((self._segment, self._pending - counted))
                self._segment = self._open_segment()
            sealed = list(self._sealed)
        for handle, count in sealed:
            self._ingest(Path(handle.name))  # raises on a database error: retried next tick
            Path(handle.name).unlink()
            handle.close()  # the lock goes only after the rows are committed
            with self._lock:
                self._sealed.remove((handle, count))
                self._pending -= count
                self._drained.notify_all()

    def _ingest_if_orphaned(self, path: Path) -> None:
        with path.open("r", encoding="utf-8") as handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return  # a live replica owns it
            self._ingest(path)
        path.unlink()
        log.info("replayed orphaned journal segment %s", path.name)

    def _ingest(self, path: Path) -> None:
        records = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(InteractionRecord(**json.loads(line)))
            except (ValueError, TypeError):
                # Only a crash mid-append leaves a torn last line, and that line's request
                # was never acknowledged (the fsync had not returned).
                log.warning("skipping a torn journal line in %s", path.name)
        with transaction(self._sessions) as session:
            for record in records:
                log_interaction(session, record=record)
