"""Federated round cost: plain FedAvg vs DP vs DP + SecAgg+, for 10 and 50 devices.

Flower's Simulation Runtime runs Kizuna's ServerApp logic and ClientApp (every device
trains the real adapter on its own simulated interactions, one local step), so the
three setups differ only in protection:

- plain FedAvg: ``robust`` mode, rule ``fedavg``, no noise (clipping far above any update);
- DP: the same with device clipping and Gaussian noise (z = 1);
- DP + SecAgg+: ``secure`` mode: SecAgg+ (each device shares keys with a fifth of the
  others) plus device clipping and noise.

Round time is the server's (instructions out → aggregate applied), from the store; bytes
are every message a device received and sent in the round, serialized as Flower sends
them. Uses the install's embedded model and stable adapter (run ``make demo`` first);
the store it writes to is a temporary one.

    KIZUNA_DATA_DIR=.data python benchmarks/federated_round.py [--devices 10 50]
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from collections import defaultdict
from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.common.serde import recorddict_to_proto
from rich.console import Console
from rich.table import Table

from common.summary import record
from kizuna.config import Settings
from kizuna.federation.config import FederationConfig
from kizuna.federation.devices import simulate_devices
from kizuna.federation.simulation import simulate
from kizuna.personas import load_profiles
from kizuna.store.adapters import register_adapter, stable_adapter
from kizuna.store.db import open_store, transaction
from kizuna.store.models import AdapterStatus
from kizuna.store.runs import rounds_of

console = Console(stderr=True)
PERSONA = "tsundere"


def traffic_counter(path: Path) -> Mod:
    """A mod that appends each message's size in and out (bytes) to ``path``."""

    def count(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        reply = call_next(msg, context)
        line = {
            "device": int(context.node_config["partition-id"]),
            "in": recorddict_to_proto(msg.content).ByteSize(),
            "out": recorddict_to_proto(reply.content).ByteSize() if reply.has_content() else 0,
        }
        with path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(line) + "\n")
        return reply

    return count


def setups() -> dict[str, dict[str, object]]:
    """The three protections compared, as FederationConfig fields."""
    return {
        "plain FedAvg": {"mode": "robust", "rule": "fedavg", "noise_multiplier": 0.0,
                         "clipping_norm": 1e6},
        "DP (clip + noise)": {"mode": "robust", "rule": "fedavg", "noise_multiplier": 1.0},
        "DP + SecAgg+": {"mode": "secure", "noise_multiplier": 1.0, "share_fraction": 0.2},
    }  # fmt: skip


def measure(
    settings: Settings, devices_root: Path, devices: int, fields: dict[str, object]
) -> tuple[float, float, float]:
    """(round seconds, bytes received per device, bytes sent per device) for one round."""
    traffic = devices_root / f"traffic-{len(list(devices_root.glob('traffic-*')))}.jsonl"
    config = FederationConfig.model_validate(
        {"persona": PERSONA, "rounds": 1, "local_steps": 1, "batch_size": 4,
         "min_devices": devices, **fields}
    )  # fmt: skip
    candidate = simulate(
        config,
        settings,
        devices_root=devices_root,
        devices=devices,
        outer_mods=[traffic_counter(traffic)],
    )
    with open_store(settings.resolved_database_url)() as session:
        (record,) = rounds_of(session, run_id=candidate.lineage["run_id"])
        seconds = float(record.details["seconds"])
    received: dict[int, int] = defaultdict(int)
    sent: dict[int, int] = defaultdict(int)
    for line in traffic.read_text(encoding="utf-8").splitlines():
        entry = json.loads(line)
        received[entry["device"]] += entry["in"]
        sent[entry["device"]] += entry["out"]
    return seconds, sum(received.values()) / devices, sum(sent.values()) / devices


def main() -> None:
    """Print one table: round time and bytes per device for each setup and fleet size."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[10, 50])
    args = parser.parse_args()
    logging.getLogger("kizuna").setLevel(logging.WARNING)

    install = Settings()
    with tempfile.TemporaryDirectory(prefix="kizuna-fl-bench-") as tmp:
        settings = Settings(
            data_dir=Path(tmp) / "data", base_model=install.resolved_base_model, device="cpu"
        )
        with open_store(install.resolved_database_url)() as session:
            stable = stable_adapter(session, persona=PERSONA)
        with transaction(open_store(settings.resolved_database_url)) as session:
            register_adapter(
                session,
                persona=PERSONA,
                artifact_url=stable.artifact_url,
                sha256=stable.sha256,
                status=AdapterStatus.STABLE,
            )
        profile = load_profiles(install.resolved_personas_dir)[PERSONA]
        table = Table(title=f"one federated round, {PERSONA} adapter, 1 local step per device")
        for column in ("devices", "setup", "round s", "÷ plain", "MB in / device",
                       "MB out / device"):  # fmt: skip
            table.add_column(column, justify="right" if column != "setup" else "left")
        for devices in args.devices:
            root = Path(tmp) / f"fleet-{devices}"
            simulate_devices(
                root, count=devices, profiles=[profile], base_model=settings.base_model
            )
            plain: float | None = None
            for name, fields in setups().items():
                console.print(f"{devices} devices · {name} …")
                seconds, received, sent = measure(settings, root, devices, fields)
                plain = plain or seconds
                table.add_row(
                    str(devices),
                    name,
                    f"{seconds:.1f}",
                    f"{seconds / plain:.2f}",
                    f"{received / 1e6:.2f}",
                    f"{sent / 1e6:.2f}",
                )
                figure = f"round time, {devices} devices, {name}"
                record(
                    "federated round", figure, seconds / plain, "plain round (no DP, no SecAgg+)"
                )
        Console().print(table)


if __name__ == "__main__":
    main()
