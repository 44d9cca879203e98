"""Flower's Deployment Engine on loopback: a real SuperLink, four SuperNodes, SecAgg+ with
DP for two rounds while one device is killed mid-round (tiny model, real everything)."""

import re
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from cli_runner import kizuna
from safetensors.numpy import load_file

from kizuna.config import Settings
from kizuna.federation.config import FederationConfig
from kizuna.federation.credentials import DEVICE_KEY_FILE, create_device_key
from kizuna.federation.deployment import (
    flower_environment,
    free_port,
    kill,
    kizuna_environment,
    local_federation,
    stop,
    supernode_command,
)
from kizuna.federation.manifest import SENT_UPDATES_DIR, DeviceManifest
from kizuna.federation.server_app import aggregates_dir
from kizuna.federation.task import local_pairs
from kizuna.store.adapters import list_adapters
from kizuna.store.db import open_store
from kizuna.store.models import AdapterStatus, Run, RunPhase
from kizuna.store.runs import rounds_of
from support import tsundere_devices

pytestmark = [pytest.mark.integration, pytest.mark.slow]
DEVICES = 4
VICTIM = 2


def _training_started(log: Path) -> bool:
    """SecAgg+ round 1: setup, key sharing, then the third message trains."""
    text = log.read_text(errors="replace") if log.exists() else ""
    return len(re.findall(r"Start `flwr-clientapp` process", text)) >= 3


@pytest.mark.reliability
def test_secure_rounds_survive_a_killed_device(bootstrapped: Settings, tmp_path: Path) -> None:
    devices = tsundere_devices(
        bootstrapped, tmp_path / "devices", count=DEVICES, interactions=16, keep_sent_updates=True
    )
    config = FederationConfig(
        persona="tsundere",
        rounds=2,
        mode="secure",
        local_steps=2,
        min_devices=3,
        noise_multiplier=0.5,
        clipping_norm=0.05,
        record_aggregates=True,
        stage_timeout_s=240,
    )
    killed_at: list[float] = []
    with local_federation(bootstrapped, tmp_path / "flower") as federation:
        for device in devices:
            federation.start_supernode(device)

        def kill_victim_mid_training() -> None:
            deadline = time.monotonic() + 400
            while time.monotonic() < deadline and not _training_started(
                federation.node_log(VICTIM)
            ):
                time.sleep(0.2)
            time.sleep(1.0)  # inside local training
            kill(federation.supernodes[VICTIM])
            killed_at.append(time.monotonic())

        killer = threading.Thread(target=kill_victim_mid_training, daemon=True)
        killer.start()
        result = federation.run(config, env=kizuna_environment(bootstrapped), timeout_s=840)
        killer.join(timeout=5)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert killed_at, "the victim never started training"

    sessions = open_store(bootstrapped.resolved_database_url)
    with sessions() as session:
        run = session.query(Run).order_by(Run.id.desc()).first()
        assert run is not None and run.phase == RunPhase.SUCCEEDED, run and run.message
        rounds = rounds_of(session, run_id=run.id)
        candidate = list_adapters(session, persona="tsundere")[-1]
    assert [r.round_number for r in rounds] == [1, 2]
    assert all(r.details["completed"] for r in rounds)
    assert rounds[0].participants == DEVICES - 1  # the round completed without the victim
    assert rounds[1].participants == DEVICES - 1
    assert rounds[0].update_norms == []  # secure mode: no individual update is visible
    assert candidate.status == AdapterStatus.CANDIDATE
    assert candidate.lineage["source"] == "federated"
    assert candidate.lineage["rounds"] == [1, 2]
    assert candidate.lineage["epsilon"] == pytest.approx(rounds[1].epsilon)
    assert 0 < candidate.lineage["epsilon"] < float("inf")
    assert rounds[0].epsilon is not None and rounds[0].epsilon < rounds[1].epsilon

    # The SecAgg+ aggregate is the plain mean of what the surviving devices sent,
    # to within SecAgg+'s quantization step.
    step = 2 * config.clipping_norm / config.quantization_range
    victim_name = f"run-{run.id}-round-1.safetensors"
    assert not (devices[VICTIM] / SENT_UPDATES_DIR / victim_name).exists()
    for round_number in (1, 2):
        name = f"run-{run.id}-round-{round_number}.safetensors"
        sent = [
            load_file(d / SENT_UPDATES_DIR / name)
            for d in devices
            if (d / SENT_UPDATES_DIR / name).exists()
        ]
        assert len(sent) == DEVICES - 1
        aggregate = load_file(
            aggregates_dir(bootstrapped, run.id) / f"round-{round_number}.safetensors"
        )
        worst = max(
            float(np.abs(aggregate[key] - np.mean([s[key] for s in sent], axis=0)).max())
            for key in aggregate
        )
        assert worst <= step * 1.001, (round_number, worst, step)
        assert max(float(np.abs(v).max()) for v in aggregate.values()) > 10 * step


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["federate", "--persona", "tsundere"], "or --local-devices N"),
        (["federate", "--persona", "nobody", "--local-devices", "2"], "nobody"),
        (
            ["federate", "--persona", "tsundere", "--local-devices", "2", "--rule", "mean"],
            "unknown aggregation rule",
        ),
        (["device", "run", "--data-dir", ".", "--superlink", "127.0.0.1:1"], "device.json"),
    ],
)
def test_bad_federation_input_is_one_error_line(
    bootstrapped: Settings, args: list[str], message: str
) -> None:
    result = kizuna(*args, env={"KIZUNA_DATA_DIR": str(bootstrapped.data_dir)})
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr


def test_device_simulate_creates_device_stores(tmp_path: Path, tiny_model_dir: Path) -> None:
    out = tmp_path / "fleet"
    env = {"KIZUNA_DATA_DIR": str(tmp_path / "data"), "KIZUNA_BASE_MODEL": str(tiny_model_dir)}
    result = kizuna("device", "simulate", "--devices", "2", "--out", str(out), env=env)
    assert result.returncode == 0, result.stderr
    for index in range(2):
        directory = out / f"device-{index:03d}"
        assert DeviceManifest.read(directory).base_model == str(tiny_model_dir)
        assert local_pairs(directory, persona="tsundere", limit=100) or local_pairs(
            directory, persona="cool", limit=100
        )


def test_only_registered_devices_join_an_authenticating_superlink(
    bootstrapped: Settings, tmp_path: Path
) -> None:
    devices = tsundere_devices(bootstrapped, tmp_path / "devices", count=3, interactions=8)
    config = FederationConfig(persona="tsundere", rounds=1, mode="robust", local_steps=1)
    with local_federation(bootstrapped, tmp_path / "flower", authenticate=True) as federation:
        assert federation.tls is not None
        registered = [federation.start_supernode(d) for d in devices[:2]]
        # The third device has a key of its own, but it was never registered.
        create_device_key(devices[2])
        stranger = subprocess.Popen(
            supernode_command(
                devices[2],
                superlink=federation.superlink_address,
                port=free_port(),
                insecure=False,
                root_certificates=federation.tls.ca_certificate,
                auth_key=devices[2] / DEVICE_KEY_FILE,
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=flower_environment(),
            start_new_session=True,
        )
        try:
            result = federation.run(config, env=kizuna_environment(bootstrapped), timeout_s=300)
            refused = stranger.poll()
        finally:
            stop(stranger)
        assert all(process.poll() is None for process in registered)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert refused is not None and refused != 0  # the SuperLink turned it away
    assert stranger.stdout is not None
    assert "SuperNode ID" not in stranger.stdout.read().decode(errors="replace")
    with open_store(bootstrapped.resolved_database_url)() as session:
        run = session.query(Run).order_by(Run.id.desc()).first()
        assert run is not None and run.phase == RunPhase.SUCCEEDED
        (round_one,) = rounds_of(session, run_id=run.id)
    assert round_one.participants == 2
