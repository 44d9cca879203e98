"""Poisoned updates against both protection modes, on Flower's Simulation Runtime with
Kizuna's ServerApp logic and ClientApp (10 devices, one scaling its update ×100, one
sending NaNs; tiny model, real local training)."""

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, Message
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.common import recorddict_compat as compat
from numpy.typing import NDArray
from safetensors.numpy import load_file

from kizuna.config import Settings
from kizuna.federation.client_app import train
from kizuna.federation.config import FederationConfig
from kizuna.federation.devices import simulate_devices
from kizuna.federation.manifest import SENT_UPDATES_DIR
from kizuna.federation.server_app import aggregates_dir
from kizuna.federation.simulation import simulate
from kizuna.federation.strategies.robust import combine
from kizuna.personas import load_profiles
from kizuna.store.db import open_store
from kizuna.store.runs import rounds_of

pytestmark = [pytest.mark.integration, pytest.mark.slow]
DEVICES = 10
SCALER, NAN_SENDER = 0, 1
Arrays = list[NDArray[np.float32]]


def _poisoned(transform: Callable[[Arrays, int], Arrays]) -> Callable[[Message, Context], Message]:
    """The honest ClientApp handler, its reply rewritten by ``transform`` (per partition)."""

    def handler(msg: Message, context: Context) -> Message:
        reply = train(msg, context)
        fitres = compat.recorddict_to_fitres(reply.content, keep_input=False)
        arrays = parameters_to_ndarrays(fitres.parameters)
        fitres.parameters = ndarrays_to_parameters(
            transform(arrays, int(context.node_config["partition-id"]))
        )
        return Message(compat.fitres_to_recorddict(fitres, keep_input=False), reply_to=msg)

    return handler


def _attack(arrays: Arrays, partition: int) -> Arrays:
    if partition == SCALER:
        return [a * 100 for a in arrays]
    if partition == NAN_SENDER:
        return [np.full_like(a, np.nan) for a in arrays]
    return arrays


def _flat(arrays: Arrays | dict[str, NDArray[np.float32]]) -> NDArray[np.float64]:
    values = arrays.values() if isinstance(arrays, dict) else arrays
    return np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in values])


def _relative(a: NDArray[np.float64], b: NDArray[np.float64]) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture
def fleet(bootstrapped: Settings, tmp_path: Path) -> tuple[Settings, list[Path]]:
    devices = simulate_devices(
        tmp_path / "devices",
        count=DEVICES,
        profiles=[load_profiles()["tsundere"]],
        base_model=bootstrapped.base_model,
        interactions=48,
        keep_sent_updates=True,
        # One strength: every device's batches scale the adapter alike (IID devices).
        strengths=(1.0,),
    )
    return bootstrapped, devices


def _sent(devices: list[Path], run_id: int) -> list[dict[str, NDArray[np.float32]]]:
    name = f"run-{run_id}-round-1.safetensors"
    return [load_file(d / SENT_UPDATES_DIR / name) for d in devices]


def test_robust_mode_resists_a_scaled_and_a_nan_update(
    fleet: tuple[Settings, list[Path]], caplog: pytest.LogCaptureFixture
) -> None:
    settings, devices = fleet
    config = FederationConfig(
        persona="tsundere",
        rounds=1,
        mode="robust",
        local_steps=2,
        batch_size=16,
        min_devices=DEVICES - 2,
        noise_multiplier=0.0,
        clipping_norm=10.0,
        record_aggregates=True,
    )
    assert config.rule == "multi-krum"  # the default robust rule
    with caplog.at_level(logging.WARNING, logger="kizuna.federation"):
        candidate = simulate(
            config,
            settings,
            devices_root=devices[0].parent,
            devices=DEVICES,
            handler=_poisoned(_attack),
        )
    run_id = candidate.lineage["run_id"]
    assert candidate.lineage["epsilon"] is None  # no noise: no privacy claimed
    with open_store(settings.resolved_database_url)() as session:
        (round_one,) = rounds_of(session, run_id=run_id)
    assert round_one.participants == DEVICES - 1
    assert [r["device"] for r in round_one.rejected] == ["device-001"]
    assert "NaN" in round_one.rejected[0]["reason"]
    assert "device-001" in caplog.text and "NaN" in caplog.text

    sent = _sent(devices, run_id)  # each device's honest update, as it left the device
    names = sorted(sent[0])
    honest = [[s[n] for n in names] for i, s in enumerate(sent) if i not in (SCALER, NAN_SENDER)]
    attacker = [sent[SCALER][n] * 100 for n in names]
    honest_mean = _flat([np.mean(layer, axis=0) for layer in zip(*honest, strict=True)])
    robust = _flat(load_file(aggregates_dir(settings, run_id) / "round-1.safetensors"))
    fedavg = _flat([np.mean(layer, axis=0) for layer in zip(*honest, attacker, strict=True)])
    robust_error = _relative(robust, honest_mean)
    fedavg_error = _relative(fedavg, honest_mean)
    others = {
        rule: _relative(
            _flat(combine([*honest, attacker], config.model_copy(update={"rule": rule}))),
            honest_mean,
        )
        for rule in ("krum", "trimmed-mean", "median")
    }
    print(
        f"\nrelative L2 to the honest-only mean: multi-krum {robust_error:.4f}, "
        f"FedAvg {fedavg_error:.2f}; "
        + ", ".join(f"{rule} {error:.3f}" for rule, error in others.items())
    )
    assert robust_error < 0.05
    assert fedavg_error > 0.05


def test_secure_mode_bounds_scaled_updates_by_the_clipping_range(
    fleet: tuple[Settings, list[Path]],
) -> None:
    """Device 0 scales its update ×100, device 1 ×10,000; SecAgg+'s range caps each
    coordinate a device adds at the clipping norm, whatever it wanted."""
    settings, devices = fleet
    clip = 2e-3
    config = FederationConfig(
        persona="tsundere",
        rounds=1,
        mode="secure",
        local_steps=2,
        min_devices=DEVICES,
        noise_multiplier=0.0,
        clipping_norm=clip,
        record_aggregates=True,
    )
    factors = {SCALER: 100.0, NAN_SENDER: 10_000.0}
    scale = _poisoned(lambda arrays, p: [a * factors.get(p, 1.0) for a in arrays])
    candidate = simulate(
        config, settings, devices_root=devices[0].parent, devices=DEVICES, handler=scale
    )
    run_id = candidate.lineage["run_id"]
    sent = [_flat(s) for s in _sent(devices, run_id)]
    aggregate = _flat(load_file(aggregates_dir(settings, run_id) / "round-1.safetensors"))
    step = 2 * clip / config.quantization_range
    honest_sum = sum(u for i, u in enumerate(sent) if i not in factors)
    # What the two attackers added to the sum, recovered from the mean of all ten.
    added = DEVICES * aggregate - honest_sum
    small, large = factors[SCALER] * sent[SCALER], factors[NAN_SENDER] * sent[NAN_SENDER]
    # ×100 stays inside the range: it arrives whole; the rest is the ×10,000 device's.
    large_added = added - small
    print(
        f"\n×100 wanted max |Δ| {np.abs(small).max():.3g}; "
        f"×10,000 wanted {np.abs(large).max():.3g}, added {np.abs(large_added).max():.3g} "
        f"(clipping range {clip:g})"
    )
    assert np.abs(small).max() < clip
    assert np.abs(large).max() > 10 * clip
    assert np.abs(large_added).max() <= clip + DEVICES * step
    assert np.abs(added).max() <= 2 * clip + DEVICES * step
