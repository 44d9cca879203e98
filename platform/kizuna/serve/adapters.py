"""Which adapter version serves a persona, and keeping it resident in the engine.

A persona resolves to its stable version in the registry, or, for the canary's share
of requests, to its canary version (or to an explicit ``persona@version``). Lookups are
cached for ``refresh_s`` seconds, so a promotion or a canary step reaches traffic within
that time, without restarting the replica.
Artifacts are fetched with their sha256 checked. A corrupted one is refused (and not
tried again): the persona's requests stay on the last version that loaded, and only a
request that names the refused version explicitly gets the error.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from kizuna.artifacts import ArtifactIntegrityError, fetch_directory
from kizuna.model.engine import Engine
from kizuna.store import adapters as adapter_store
from kizuna.store.models import Adapter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Serving:
    """The versions serving a persona: stable, and a canary with its traffic share."""

    stable: int
    canary: int | None = None
    canary_weight: float = 0.0


class AdapterRouter:
    """Resolves persona names to resident engine adapters."""

    def __init__(
        self,
        engine: Engine,
        sessions: sessionmaker[Session],
        *,
        cache_dir: Path,
        refresh_s: float = 5.0,
    ) -> None:
        self._engine = engine
        self._sessions = sessions
        self._cache_dir = cache_dir
        self._refresh_s = refresh_s
        self._serving: dict[str, tuple[Serving, float]] = {}
        self._lock = threading.Lock()
        self._coin = random.Random()
        #: Versions whose artifact failed its integrity check, with the reason.
        self.refused: dict[tuple[str, int], str] = {}
        self._last_loaded: dict[str, int] = {}

    def resolve(self, persona: str, version: int | None = None) -> tuple[str, int]:
        """The engine adapter name and the version serving ``persona`` (loaded if needed)."""
        if version is not None:
            return self._resident(persona, version), version
        serving = self.serving(persona)
        version = serving.stable
        if serving.canary is not None and self._coin.random() < serving.canary_weight:
            version = serving.canary
        fallback = self._last_loaded.get(persona)
        if (persona, version) in self.refused and fallback is not None:
            return self._resident(persona, fallback), fallback
        try:
            name = self._resident(persona, version)
        except ArtifactIntegrityError:
            if fallback is None:
                raise
            return self._resident(persona, fallback), fallback
        self._last_loaded[persona] = version
        return name, version

    def _resident(self, persona: str, version: int) -> str:
        name = f"{persona}@{version}"
        if (persona, version) in self.refused:
            raise ArtifactIntegrityError(self.refused[persona, version])
        if name not in self._engine.resident:
            with self._lock:
                if name not in self._engine.resident:
                    try:
                        self._load(persona, version, name)
                    except ArtifactIntegrityError as exc:
                        log.error("refusing %s: %s", name, exc)
                        self.refused[persona, version] = str(exc)
                        raise
        return name

    def serving(self, persona: str) -> Serving:
        """The persona's stable and canary versions, read at most every ``refresh_s``."""
        cached = self._serving.get(persona)
        if cached is not None and time.monotonic() - cached[1] < self._refresh_s:
            return cached[0]
        try:
            with self._sessions() as session:
                stable = adapter_store.stable_adapter(session, persona=persona).version
                canary = adapter_store.canary_adapter(session, persona=persona)
        except OperationalError:
            if cached is None:
                raise
            # The registry is unreachable (a database restart): keep serving what it
            # said last; the next request after ``refresh_s`` asks again.
            log.warning("registry unreachable; %s keeps its last known versions", persona)
            self._serving[persona] = (cached[0], time.monotonic())
            return cached[0]
        serving = Serving(stable)
        if canary is not None:
            serving = Serving(stable, canary.version, canary.traffic_weight)
        self._serving[persona] = (serving, time.monotonic())
        return serving

    def _load(self, persona: str, version: int, name: str) -> None:
        with self._sessions() as session:
            record = adapter_store.get_adapter(session, persona=persona, version=version)
        make_resident(self._engine, record, name=name, cache_dir=self._cache_dir)

    def versions(self) -> dict[str, list[tuple[int, str, float]]]:
        """Every persona's versions with status and traffic share, for /v1/models."""
        with self._sessions() as session:
            result: dict[str, list[tuple[int, str, float]]] = {}
            for adapter in adapter_store.list_adapters(session):
                result.setdefault(adapter.persona, []).append(
                    (adapter.version, adapter.status.value, adapter.traffic_weight)
                )
        return result


def make_resident(engine: Engine, record: Adapter, *, name: str, cache_dir: Path) -> None:
    """Fetch a registered adapter's artifact (sha256 checked) and load it into ``engine``."""
    directory = fetch_directory(record.artifact_url, sha256=record.sha256, cache_dir=cache_dir)
    engine.load_adapter(name, directory)
