"""Small pieces several test modules need: quiet progress, a free port, a local replica
(over HTTP too), a random adapter, logged traffic, a rollout's environment."""

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import torch
import uvicorn
from fastapi import FastAPI
from sqlalchemy.orm import Session, sessionmaker

from kizuna.config import Settings
from kizuna.federation.devices import simulate_devices
from kizuna.model.base import load_base_model
from kizuna.model.engine import EngineRequest, build_engine
from kizuna.model.generation import Generation
from kizuna.model.lora import LoraShape, new_adapter
from kizuna.personas import load_profiles
from kizuna.serve.runtime import Replica, build_replica
from kizuna.store import runs
from kizuna.store.adapters import register_adapter
from kizuna.store.db import transaction
from kizuna.store.interactions import InteractionRecord, log_interaction
from kizuna.store.models import AdapterStatus, RunKind, RunPhase

#: The bearer token of the replicas ``make_replica`` (conftest) builds.
API_TOKEN = "test-token"


class QuietProgress:
    """Bootstrap progress that reports nowhere."""

    def stage(self, description: str, total: int | None = None) -> None: ...
    def advance(self, steps: int = 1, *, note: str = "") -> None: ...


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def served_over_http(app: FastAPI) -> Iterator[str]:
    """``app`` served by uvicorn on a loopback port for the block; its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)


def in_process_replica(settings: Settings) -> Replica:
    """One serving replica (real engine, store, journal) without Ray: each request runs
    alone on a worker thread in place of Serve's batching."""
    engine = build_engine(settings)

    async def run_one(request: EngineRequest) -> Generation:
        return (await asyncio.to_thread(engine.generate, [request]))[0]

    return build_replica(settings, engine, run_one)


def random_adapter(model_dir: Path, directory: Path, *, seed: int, rank: int) -> Path:
    """A PEFT adapter whose B is non-zero, so it changes the model's output."""
    model = new_adapter(
        load_base_model(str(model_dir), device=torch.device("cpu")),
        LoraShape(rank=rank, alpha=2 * rank, dropout=0.0),
        seed=seed,
    )
    generator = torch.Generator().manual_seed(seed)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            parameter.data = torch.randn(parameter.shape, generator=generator) * 0.2
    model.save_pretrained(directory, safe_serialization=True)
    return directory


def log_served(
    sessions: sessionmaker[Session], *, version: int, n: int, entropy: float = 1.0
) -> None:
    """Log ``n`` tsundere requests answered by ``version``, as the serving path does."""
    with transaction(sessions) as session:
        for _ in range(n):
            record = InteractionRecord(
                public_id=str(uuid.uuid4()),
                request_text="Can you help me?",
                output_text="Hmph. Fine.",
                strength=1.0,
                adapter_versions={"tsundere": version},
                token_entropies=[entropy] * 4,
                latency_ms=80.0,
                persona="tsundere",
            )
            log_interaction(session, record=record)


def rollout_env(settings: Settings) -> dict[str, str]:
    """The environment of a `kizuna rollout` process that drives ``settings``' installation.

    The live latency gate is loosened: it has its own unit tests, and a test that is about
    a rollout's steps must not turn on one request stalled past 500 ms on a busy runner
    (with ``--min-requests 3`` the nearest-rank p95 is the slowest request).
    """
    return {
        **os.environ,
        "KIZUNA_DATA_DIR": str(settings.data_dir),
        "KIZUNA_BASE_MODEL": settings.base_model,
        "KIZUNA_DEVICE": "cpu",
        "KIZUNA_GATES": json.dumps({"tsundere": {"max_latency_ms_cpu": 60_000}}),
        "COLUMNS": "200",
    }


def _as_server_user(command: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root; CI runs as root, so run it as 'postgres'.
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


class PostgresServer:
    """A throwaway PostgreSQL cluster on loopback, started (and restarted) by the tests."""

    def __init__(self, bindir: Path, root: Path, port: int) -> None:
        self._bindir, self.root, self.port = bindir, root, port
        self.url = f"postgresql+psycopg://kizuna@127.0.0.1:{port}/postgres"

    @classmethod
    def create(cls) -> "PostgresServer":
        """initdb and start a new cluster (skips, or fails in CI, without PostgreSQL)."""
        candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
        if not candidates:
            message = "PostgreSQL is not installed; run scripts/system-deps.sh (make test does)"
            if os.environ.get("CI"):
                pytest.fail(message)
            pytest.skip(message)
        root = Path(tempfile.mkdtemp(prefix="kizuna-pg-"))
        if os.geteuid() == 0:
            shutil.chown(root, "postgres", "postgres")
        server = cls(candidates[-1].parent, root, free_port())
        initdb = [str(server._bindir / "initdb"), "-D", str(root / "data"), "-A", "trust"]
        subprocess.run(_as_server_user([*initdb, "-U", "kizuna"]), check=True, capture_output=True)
        server.start()
        return server

    def _ctl(self, *args: str) -> None:
        pg_ctl = [str(self._bindir / "pg_ctl"), "-D", str(self.root / "data")]
        subprocess.run(_as_server_user([*pg_ctl, *args]), check=True, capture_output=True)

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._ctl("-o", options, "-l", str(self.root / "log"), "-w", "start")

    def stop(self) -> None:
        """Stop at once, as a crash would (open connections are cut)."""
        self._ctl("-m", "immediate", "stop")

    def remove(self) -> None:
        """Stop the server (if running) and delete its files."""
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def register_stable_tsundere(sessions: sessionmaker[Session]) -> None:
    """The registry before any retrain: tsundere version 1, stable."""
    with transaction(sessions) as session:
        register_adapter(
            session,
            persona="tsundere",
            artifact_url="file:///artifacts/v1",
            sha256="1" * 64,
            status=AdapterStatus.STABLE,
        )


#: Offline metrics a candidate passes every default gate with.
PASSING_METRICS = {
    "style_accuracy": 0.9,
    "content_preservation": 0.95,
    "latency_p95_ms": 60.0,
    "gates": {"strength_monotonic": True},
}


def register_retrain_result(
    sessions: sessionmaker[Session], *, job_name: str, succeeded: bool = True
) -> int | None:
    """What a retrain job records when it ends: its run and, if it succeeded, a tsundere
    candidate with passing metrics (its version is returned)."""
    with transaction(sessions) as session:
        record = runs.create_run(
            session, kind=RunKind.RETRAIN, persona="tsundere", config={"job_name": job_name}
        )
        if not succeeded:
            return None
        version = register_adapter(
            session,
            persona="tsundere",
            artifact_url=f"file:///artifacts/{job_name}",
            sha256="2" * 64,
            metrics=PASSING_METRICS,
        ).version
        runs.update_run(
            session,
            run_id=record.id,
            phase=RunPhase.SUCCEEDED,
            metrics={"candidate_version": version},
        )
    return version


@contextlib.contextmanager
def cpu_hog(*, limit_s: float = 1200.0) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Every core kept busy by a spinning process while the block runs (at most
    ``limit_s``: a hog left by a crashed test ends by itself)."""
    spin = f"import time\nend = time.monotonic() + {limit_s}\nwhile time.monotonic() < end: pass"
    hogs = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(os.cpu_count() or 2)]
    try:
        yield hogs
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def processes_of(data_dir: Path) -> list[psutil.Process]:
    """Live processes (zombies aside) started for the install at ``data_dir``: everything a
    ``kizuna`` command starts inherits its ``KIZUNA_DATA_DIR``."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.pid == os.getpid() or process.status() == psutil.STATUS_ZOMBIE:
                continue
            if process.environ().get("KIZUNA_DATA_DIR") == str(data_dir):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def tsundere_devices(
    settings: Settings,
    root: Path,
    *,
    count: int,
    interactions: int,
    keep_sent_updates: bool = False,
) -> list[Path]:
    """``count`` simulated fleet devices under ``root``, each with ``interactions`` of its
    own with the tsundere persona, on the base model of ``settings``."""
    return simulate_devices(
        root,
        count=count,
        profiles=[load_profiles()["tsundere"]],
        base_model=settings.base_model,
        interactions=interactions,
        keep_sent_updates=keep_sent_updates,
    )
