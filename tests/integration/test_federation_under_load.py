"""The loop on a busy machine: every core spun by a hog while ``kizuna federate`` runs a
secure round on four local devices, and while ``kizuna serve`` takes the demo's traffic;
and ``kizuna federate`` (three local devices, end to end) stopped with SIGTERM mid-run,
then resumed to a candidate the retrain job warm-starts from. Nothing a command started
may be alive after it, and nothing acknowledged may be lost."""

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from cli_runner import kizuna
from sqlalchemy import select

from kizuna.config import Settings
from kizuna.demo.loop import wait_healthy
from kizuna.demo.stages import BackgroundProcess, kizuna_command
from kizuna.demo.traffic import Fleet, SimulatedDevice
from kizuna.federation.server_app import checkpoint_path
from kizuna.processes import SIGTERM_EXIT_CODE
from kizuna.store.adapters import list_adapters
from kizuna.store.db import open_store, transaction
from kizuna.store.devices import register_device
from kizuna.store.models import AdapterStatus, Interaction, Run, RunKind, RunPhase
from kizuna.store.runs import rounds_of
from kizuna_jobs.retrain import RetrainConfig, warm_start_adapter
from support import cpu_hog, free_port, processes_of

pytestmark = [pytest.mark.reliability, pytest.mark.integration, pytest.mark.slow]


def _env(settings: Settings) -> dict[str, str]:
    return {
        "KIZUNA_DATA_DIR": str(settings.data_dir),
        "KIZUNA_BASE_MODEL": settings.base_model,
        "KIZUNA_DEVICE": "cpu",
    }


def _federate(devices: int, *extra: str) -> list[str]:
    local = ["--local-devices", str(devices), "--local-steps", "1"]
    return ["federate", "--persona", "tsundere", *local, *extra]


def _latest_federated_run(settings: Settings) -> Run | None:
    with open_store(settings.resolved_database_url)() as session:
        query = select(Run).where(Run.kind == RunKind.FEDERATED).order_by(Run.id.desc())
        run = session.scalars(query).first()
        if run is not None:
            session.expunge(run)
        return run


def _assert_nothing_left(settings: Settings) -> None:
    deadline = time.monotonic() + 15  # a SIGKILLed process may take a moment to go
    while (left := processes_of(settings.data_dir)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert left == [], [(p.pid, p.cmdline()[:3]) for p in left]


def test_a_secure_round_on_four_devices_completes_while_every_core_is_busy(
    bootstrapped: Settings,
) -> None:
    with cpu_hog() as hogs:
        started = time.monotonic()
        result = kizuna(
            *_federate(4), "--rounds", "1", "--mode", "secure", env=_env(bootstrapped), timeout=900
        )
        seconds = time.monotonic() - started
        assert all(hog.poll() is None for hog in hogs)  # the cores stayed busy throughout
    print(f"\nsecure round, 4 devices, {len(hogs)} cores spun: {seconds:.0f} s")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run = _latest_federated_run(bootstrapped)
    assert run is not None and run.phase == RunPhase.SUCCEEDED, run and run.message
    with open_store(bootstrapped.resolved_database_url)() as session:
        (round_one,) = rounds_of(session, run_id=run.id)
    assert round_one.details["completed"] and round_one.participants == 4
    assert round_one.details["factors"] == "b"
    _assert_nothing_left(bootstrapped)


def test_sigterm_mid_run_ends_every_process_and_the_run_resumes(bootstrapped: Settings) -> None:
    command = subprocess.Popen(
        kizuna_command(*_federate(3), "--rounds", "2", "--mode", "robust", "--rule", "fedavg"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **_env(bootstrapped), "COLUMNS": "200"},
    )
    deadline = time.monotonic() + 600
    run = None
    while time.monotonic() < deadline and command.poll() is None:
        run = _latest_federated_run(bootstrapped)
        if run is not None and "round 1/2 done" in run.message:
            break
        time.sleep(0.5)
    assert run is not None and command.poll() is None, command.stdout and command.stdout.read()
    time.sleep(2.0)  # round 2 is under way
    assert len(processes_of(bootstrapped.data_dir)) > 4  # CLI, SuperLink, 3 SuperNodes, …
    command.send_signal(signal.SIGTERM)
    output, _ = command.communicate(timeout=120)
    assert command.returncode == SIGTERM_EXIT_CODE, output[-3000:]
    assert f"--resume {run.id}" in output
    _assert_nothing_left(bootstrapped)
    stopped = _latest_federated_run(bootstrapped)
    assert stopped is not None and stopped.phase == RunPhase.FAILED, stopped
    assert checkpoint_path(bootstrapped, run.id, 1).is_file()

    resumed = kizuna(*_federate(3), "--resume", str(run.id), env=_env(bootstrapped), timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "registered tsundere v2 (candidate); ε = " in resumed.stdout
    assert len(list((bootstrapped.data_dir / "devices").glob("device-*/device.json"))) == 3
    with open_store(bootstrapped.resolved_database_url)() as session:
        rounds = rounds_of(session, run_id=run.id)
        candidate = list_adapters(session, persona="tsundere")[-1]
        # The retrain job warm-starts from what the fleet produced.
        federated = warm_start_adapter(
            session, RetrainConfig(persona="tsundere", warm_start="federated")
        )
    assert [r.round_number for r in rounds] == [1, 2]  # round 1 was not played again
    assert all(r.participants == 3 and len(r.update_norms) == 3 for r in rounds)
    assert candidate.status == AdapterStatus.CANDIDATE and candidate.lineage["rounds"] == [1, 2]
    assert federated.version == candidate.version == 2
    assert (federated.lineage["mode"], federated.lineage["aggregation"]) == ("robust", "fedavg")
    # The server saw every update and averaged them: the mean of the B updates is exact.
    errors = [r.details["aggregation_error"] for r in rounds]
    print(f"\nrelative aggregation error per round (fedavg, B only): {errors}")
    assert all(error is not None and error <= 1e-6 for error in errors)
    _assert_nothing_left(bootstrapped)


def test_serve_and_traffic_while_every_core_is_busy_lose_nothing(
    bootstrapped: Settings, tmp_path: Path
) -> None:
    sessions = open_store(bootstrapped.resolved_database_url)
    with transaction(sessions) as session:
        devices = [
            SimulatedDevice(
                f"busy-{i}", register_device(session, device_id=f"busy-{i}"), ("tsundere",), True
            )
            for i in range(4)
        ]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with cpu_hog():
        server = BackgroundProcess(
            kizuna_command("serve", "--port", str(port)),
            tmp_path / "serve.log",
            env=_env(bootstrapped),
        )
        fleet = Fleet(url, devices, seed=5, max_new_tokens=6, max_attempts=8, timeout_s=300)
        try:
            wait_healthy(url, server, timeout_s=600)
            tally = fleet.send(24)
        finally:
            fleet.close()
            status = server.stop()
    print(
        f"\ntraffic with every core spun: sent {tally.sent}, answered {tally.answered}, "
        f"retried {tally.retried}, refused {tally.refused}, errors {tally.errors[:3]}"
    )
    assert status == 0, server.log.read_text()[-3000:]
    assert tally.errors == [] and tally.answered > 0
    with sessions() as session:
        stored = set(session.scalars(select(Interaction.public_id)))
    assert set(tally.interaction_ids) <= stored
    _assert_nothing_left(bootstrapped)
