"""Flower's Deployment Engine on one machine: a SuperLink, SuperNodes, ``flwr run``.

``kizuna federate --local-devices N`` and the integration tests use this; a cluster runs
the same processes (the chart's SuperLink, devices' ``kizuna device run``).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from kizuna.config import Settings
from kizuna.federation.config import FederationConfig
from kizuna.federation.credentials import (
    DEVICE_KEY_FILE,
    DEVICE_PUBLIC_KEY_FILE,
    TlsFiles,
    create_device_key,
    create_tls,
)
from kizuna.federation.devices import simulate_devices
from kizuna.personas.schema import PersonaProfile
from kizuna.processes import end_session, kill_session

APP_DIR = Path(__file__).parent / "app"


def _executable(name: str) -> str:
    """A Flower command from this interpreter's environment (or PATH)."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else (shutil.which(name) or name)


def flower_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) with this interpreter's scripts first
    on PATH: Flower's processes start their helpers (``flower-superexec``,
    ``flwr-serverapp``, ``flwr-clientapp``) by name."""
    env = dict(os.environ if base is None else base)
    scripts = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([scripts, env.get("PATH", "")])
    return env


def free_port() -> int:
    """An unused loopback port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(address: str, *, timeout_s: float, process: subprocess.Popen[bytes]) -> None:
    """Block until something listens on ``host:port``; fail if ``process`` dies first."""
    host, port = address.rsplit(":", 1)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex((host, int(port))) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on {address} after {timeout_s:.0f} s")


def kizuna_environment(settings: Settings) -> dict[str, str]:
    """The environment a ServerApp needs to reach this install's store and artifacts."""
    env = flower_environment()
    env.update(
        KIZUNA_DATA_DIR=str(settings.data_dir),
        KIZUNA_DATABASE_URL=settings.resolved_database_url,
        KIZUNA_ARTIFACT_URL=settings.resolved_artifact_url,
        KIZUNA_BASE_MODEL=settings.base_model,
        KIZUNA_DEVICE=settings.device,
    )
    if settings.personas_dir is not None:
        env["KIZUNA_PERSONAS_DIR"] = str(settings.personas_dir)
    return env


def stop(process: subprocess.Popen[bytes], *, grace_s: float = 10.0) -> None:
    """Stop a process started in its own session, and every process still in that session:
    a SuperLink's ServerApp may outlive the SuperLink and ignore SIGTERM for a while."""
    end_session(process.pid, grace_s=grace_s)
    process.poll()


def kill(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL a process and its session at once (a device losing power)."""
    kill_session(process.pid)
    process.poll()


def keep_running(
    command: Sequence[str],
    *,
    env: Mapping[str, str],
    max_restarts: int,
    settle_s: float = 60.0,
    on_restart: Callable[[int, float], None] = lambda status, wait_s: None,
) -> int:
    """Run a device's SuperNode, starting it again whenever it exits, until it has exited
    ``max_restarts`` times in a row within ``settle_s`` of starting; returns its last status.

    Flower's SuperNode retries an unreachable SuperLink and 502/503/504, but quits on any
    other server error (a SuperLink's HTTP 500 under load); a device should rejoin instead.
    Waits 1, 2, 4, … 60 s between starts; a run that lasted ``settle_s`` resets the count.
    """
    quick_exits = 0
    while True:
        started = time.monotonic()
        status = subprocess.run(list(command), env=dict(env), check=False).returncode
        quick_exits = quick_exits + 1 if time.monotonic() - started < settle_s else 1
        if quick_exits > max_restarts:
            return status
        wait_s = min(60.0, 2.0 ** (quick_exits - 1))
        on_restart(status, wait_s)
        time.sleep(wait_s)


@dataclass
class LocalFederation:
    """A running SuperLink and SuperNodes; logs go to ``work_dir``."""

    work_dir: Path
    superlink_address: str
    superlink: subprocess.Popen[bytes]
    #: TLS and node authentication, or None for a plain loopback SuperLink.
    tls: TlsFiles | None = None
    supernodes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def flwr_home(self) -> Path:
        """The Flower CLI's home, pointing at this SuperLink."""
        root = self.tls.ca_certificate if self.tls else None
        return flwr_home(self.work_dir, self.superlink_address, root_certificates=root)

    def register_device(self, public_key: Path) -> None:
        """Allow the device holding ``public_key``'s private key to join."""
        subprocess.run(
            [_executable("flwr"), "supernode", "register", str(public_key), "kizuna"],
            env={**flower_environment(), "FLWR_HOME": str(self.flwr_home)},
            capture_output=True,
            check=True,
            timeout=60,
        )

    def node_log(self, index: int) -> Path:
        """The log file of SuperNode ``index``."""
        return self.work_dir / f"supernode-{index}.log"

    def start_supernode(self, data_dir: Path) -> subprocess.Popen[bytes]:
        """Start one device's SuperNode against this SuperLink (registering its key first
        when the SuperLink authenticates devices)."""
        index = len(self.supernodes)
        auth_key = None
        if self.tls is not None:
            auth_key = data_dir / DEVICE_KEY_FILE
            if not auth_key.is_file():
                create_device_key(data_dir)
            self.register_device(data_dir / DEVICE_PUBLIC_KEY_FILE)
        command = supernode_command(
            data_dir,
            superlink=self.superlink_address,
            port=free_port(),
            insecure=self.tls is None,
            root_certificates=self.tls.ca_certificate if self.tls else None,
            auth_key=auth_key,
        )
        with self.node_log(index).open("wb") as log:
            process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=flower_environment(),
                start_new_session=True,
            )
        self.supernodes.append(process)
        return process

    def run(
        self, config: FederationConfig, *, env: Mapping[str, str], timeout_s: float | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``flwr run`` the Kizuna app against this SuperLink; waits until the run ends."""
        return flwr_run(
            self.superlink_address,
            config,
            env=env,
            work_dir=self.work_dir,
            root_certificates=self.tls.ca_certificate if self.tls else None,
            timeout_s=timeout_s,
        )

    def close(self) -> None:
        """Stop every SuperNode, then the SuperLink."""
        for process in self.supernodes:
            stop(process)
        stop(self.superlink)


def flwr_home(work_dir: Path, superlink: str, *, root_certificates: Path | None) -> Path:
    """A Flower CLI home under ``work_dir`` whose default SuperLink is ``superlink``."""
    home = work_dir / "flwr-home"
    home.mkdir(parents=True, exist_ok=True)
    security = (
        f'root-certificates = "{root_certificates}"'
        if root_certificates is not None
        else "insecure = true"
    )
    (home / "config.toml").write_text(
        '[superlink]\ndefault = "kizuna"\n\n[superlink.kizuna]\n'
        f'address = "{superlink}"\n{security}\n',
        encoding="utf-8",
    )
    return home


def flwr_run(
    superlink: str,
    config: FederationConfig,
    *,
    env: Mapping[str, str],
    work_dir: Path,
    root_certificates: Path | None = None,
    timeout_s: float | None = None,
) -> subprocess.CompletedProcess[str]:
    """``flwr run`` the Kizuna app with ``config`` on the SuperLink at ``superlink``."""
    home = flwr_home(work_dir, superlink, root_certificates=root_certificates)
    command = [
        _executable("flwr"),
        "run",
        str(APP_DIR),
        "kizuna",
        "--run-config",
        config.overrides(),
        "--stream",
    ]
    return subprocess.run(
        command,
        env={**env, "FLWR_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def supernode_command(
    data_dir: Path,
    *,
    superlink: str,
    port: int,
    insecure: bool,
    root_certificates: Path | None = None,
    auth_key: Path | None = None,
) -> list[str]:
    """The ``flower-supernode`` command line of one device."""
    command = [
        _executable("flower-supernode"),
        "--superlink",
        superlink,
        "--port",
        str(port),
        "--node-config",
        f"data-dir='{data_dir}'",
    ]
    if insecure:
        command.append("--insecure")
    if root_certificates is not None:
        command += ["--root-certificates", str(root_certificates)]
    if auth_key is not None:
        command += ["--auth-supernode-private-key", str(auth_key)]
    return command


@contextmanager
def local_federation(
    settings: Settings, work_dir: Path, *, authenticate: bool = False
) -> Iterator[LocalFederation]:
    """A SuperLink on loopback whose ServerApps see this install's store; stopped on exit.

    ``authenticate``: TLS with a throwaway CA, and only registered devices may join.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    address = f"127.0.0.1:{port}"
    tls = create_tls(work_dir / "tls") if authenticate else None
    security = (
        [
            "--ssl-ca-certfile",
            str(tls.ca_certificate),
            "--ssl-certfile",
            str(tls.certificate),
            "--ssl-keyfile",
            str(tls.private_key),
            "--enable-supernode-auth",
        ]
        if tls is not None
        else ["--insecure"]
    )
    command = [
        _executable("flower-superlink"),
        *security,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        # No --database: Flower's in-memory link state. Its SQLite state waits 5 s for a
        # lock and then fails the device's request (HTTP 500) on a busy machine; a local
        # SuperLink lives for one run, and the rounds and weights are in Kizuna's store.
        # The ServerApp is the installed kizuna package: nothing to install per run.
        "--disable-runtime-dependency-installation",
    ]
    with (work_dir / "superlink.log").open("wb") as log:
        superlink = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=kizuna_environment(settings),
            start_new_session=True,
        )
    federation = LocalFederation(
        work_dir=work_dir, superlink_address=address, superlink=superlink, tls=tls
    )
    try:
        wait_for_port(address, timeout_s=60, process=superlink)
        yield federation
    finally:
        federation.close()


def federate(
    settings: Settings,
    config: FederationConfig,
    *,
    superlink: str | None = None,
    root_certificates: Path | None = None,
    local_devices: int | None = None,
    profiles: Sequence[PersonaProfile] = (),
) -> subprocess.CompletedProcess[str]:
    """Run ``config``'s rounds on ``superlink``, or with ``local_devices`` simulated devices
    (interactions of ``profiles``) behind a local authenticating SuperLink."""
    work_dir = settings.data_dir / "federation" / f"run-{config.run_id}"
    env = kizuna_environment(settings)
    if local_devices is None:
        if superlink is None:
            raise ValueError("a SuperLink address or a number of local devices is needed")
        return flwr_run(
            superlink, config, env=env, work_dir=work_dir, root_certificates=root_certificates
        )
    devices = simulate_devices(
        settings.data_dir / "devices",
        count=local_devices,
        profiles=profiles,
        base_model=settings.resolved_base_model,
    )
    with local_federation(settings, work_dir, authenticate=True) as federation:
        for device in devices:
            federation.start_supernode(device)
        return federation.run(config, env=env)
