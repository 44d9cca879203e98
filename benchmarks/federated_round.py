"""Federated rounds: the cost of each protection, and exact vs inexact LoRA aggregation.

Flower's Simulation Runtime runs Kizuna's ServerApp logic and ClientApp (every device
trains the real adapter on its own simulated interactions, one local step), so the
three setups differ only in protection:

- plain FedAvg: ``robust`` mode, rule ``fedavg``, no noise (clipping far above any update);
- DP: the same with device clipping and Gaussian noise (z = 1);
- DP + SecAgg+: ``secure`` mode: SecAgg+ (each device shares keys with a fifth of the
  others) plus device clipping and noise.

Round time is the server's (instructions out → aggregate applied), from the store; bytes
are every message a device received and sent in the round, serialized as Flower sends
them.

The second table runs the same DP rounds (same noise, clipping and rounds: the same ε)
twice: devices training and sending both LoRA factors, averaged apart (Kizuna before
FFA-LoRA: mean(Bᵢ)·mean(Aᵢ) ≠ mean(BᵢAᵢ)), and only B with A frozen (exact). It
reports the relative aggregation error the server measured per round, the bytes a device
sends, and the candidate's style and content on held-out inputs of both languages, by
the same judge and content check as every evaluation report.

Uses the install's embedded model and stable adapter (run ``make demo`` or ``kizuna
bootstrap`` first); the store it writes to is a temporary one.

    KIZUNA_DATA_DIR=.data python benchmarks/federated_round.py [--devices 10 50]
        [--quality-devices 8 --quality-rounds 3 --quality-noise 1.0 --heldout 12]
        [--only-quality]
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from collections import defaultdict
from pathlib import Path

import torch
from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.common.serde import recorddict_to_proto
from rich.console import Console
from rich.table import Table

from common.summary import record
from kizuna.artifacts import fetch_directory
from kizuna.config import Settings
from kizuna.datasets.content import ContentCheck
from kizuna.evaluation.candidate import generate_transforms, heldout_inputs
from kizuna.evaluation.classifier import load_or_train
from kizuna.evaluation.metrics import content_preservation, style_accuracy
from kizuna.federation.config import Factors, FederationConfig
from kizuna.federation.devices import simulate_devices
from kizuna.federation.simulation import simulate
from kizuna.model.base import load_base_model, load_tokenizer
from kizuna.model.engine import Engine
from kizuna.personas import load_profiles
from kizuna.personas.schema import PersonaProfile
from kizuna.store.adapters import register_adapter, stable_adapter
from kizuna.store.db import open_store, transaction
from kizuna.store.models import Adapter, AdapterStatus
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


def federate(
    settings: Settings, devices_root: Path, devices: int, fields: dict[str, object]
) -> tuple[Adapter, float, float]:
    """The candidate of one simulated run, and the bytes each device received and sent
    (per device, all rounds)."""
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
    received: dict[int, int] = defaultdict(int)
    sent: dict[int, int] = defaultdict(int)
    for line in traffic.read_text(encoding="utf-8").splitlines():
        entry = json.loads(line)
        received[entry["device"]] += entry["in"]
        sent[entry["device"]] += entry["out"]
    return candidate, sum(received.values()) / devices, sum(sent.values()) / devices


def measure(
    settings: Settings, devices_root: Path, devices: int, fields: dict[str, object]
) -> tuple[float, float, float]:
    """(round seconds, bytes received per device, bytes sent per device) for one round."""
    candidate, received, sent = federate(settings, devices_root, devices, fields)
    with open_store(settings.resolved_database_url)() as session:
        (round_one,) = rounds_of(session, run_id=candidate.lineage["run_id"])
        seconds = float(round_one.details["seconds"])
    return seconds, received, sent


def quality(
    settings: Settings, root: Path, profile: PersonaProfile, args: argparse.Namespace
) -> None:
    """Print the second table: the same DP rounds with both factors averaged apart and
    with only B (exact), and the candidates' style and content on held-out inputs."""
    simulate_devices(
        root, count=args.quality_devices, profiles=[profile], base_model=settings.base_model
    )
    dp: dict[str, object] = {"mode": "robust", "rule": "fedavg", "rounds": args.quality_rounds,
                             "noise_multiplier": args.quality_noise, "local_steps": 2}  # fmt: skip
    arms: dict[str, Factors] = {"A and B averaged apart": "both", "B only, A frozen": "b"}
    candidates: dict[str, tuple[Adapter, float, list[float]]] = {}
    for name, factors in arms.items():
        console.print(f"{args.quality_devices} devices · DP · {name} …")
        candidate, _, sent = federate(
            settings, root, args.quality_devices, {**dp, "factors": factors}
        )
        with open_store(settings.resolved_database_url)() as session:
            rounds = rounds_of(session, run_id=candidate.lineage["run_id"])
            errors = [float(r.details["aggregation_error"]) for r in rounds]
        candidates[name] = (candidate, sent, errors)

    engine = Engine(
        load_base_model(settings.resolved_base_model, device=torch.device("cpu")),
        load_tokenizer(settings.resolved_base_model),
        max_adapters=4,
    )
    with open_store(settings.resolved_database_url)() as session:
        start = stable_adapter(session, persona=PERSONA)
    adapters = {"stable (start)": start, **{name: c for name, (c, _, _) in candidates.items()}}
    for name, adapter in adapters.items():
        directory = fetch_directory(
            adapter.artifact_url, sha256=adapter.sha256, cache_dir=settings.adapter_cache_dir
        )
        engine.load_adapter(name, directory)
    inputs = heldout_inputs(args.heldout)
    judge = load_or_train(load_profiles(settings.resolved_personas_dir), settings.judge_dir)
    content = ContentCheck()
    table = Table(
        title=f"same ε: {args.quality_devices} devices, {args.quality_rounds} DP rounds "
        f"(z = {args.quality_noise:g}, C = 1, fedavg), on {len(inputs)} held-out inputs (en + zh)"
    )
    for column in ("aggregation", "ε", "max rel. aggregation error", "MB out / device",
                   "style accuracy", "content"):  # fmt: skip
        table.add_column(column, justify="left" if column == "aggregation" else "right")
    scores: dict[str, tuple[float, float]] = {}
    for name in adapters:
        console.print(f"evaluating {name} …")
        rows = [(name, text, 1.0) for text in inputs]
        outputs = [g.text for g in generate_transforms(engine, rows, 40)]
        scores[name] = (
            style_accuracy(judge.classifier, outputs, PERSONA),
            content_preservation(content, inputs, outputs),
        )
        federated = candidates.get(name)
        table.add_row(
            name,
            f"{federated[0].lineage['epsilon']:.3g}" if federated else "-",
            f"{max(federated[2]):.2e}" if federated else "-",
            f"{federated[1] / 1e6:.2f}" if federated else "-",
            f"{scores[name][0]:.3f}",
            f"{scores[name][1]:.3f}",
        )
    Console().print(table)
    inexact, exact = (scores[name] for name in arms)
    old_bytes, new_bytes = (candidates[name][1] for name in arms)
    record("federated round", "bytes a device sends, B only ÷ A and B", new_bytes / old_bytes,
           "A and B averaged apart")  # fmt: skip
    record("federated round", "content, B only ÷ A and B", exact[1] / max(inexact[1], 1e-9),
           "A and B averaged apart")  # fmt: skip


def main() -> None:
    """Print one table: round time and bytes per device for each setup and fleet size."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--quality-devices", type=int, default=8)
    parser.add_argument("--quality-rounds", type=int, default=3)
    parser.add_argument("--quality-noise", type=float, default=1.0, help="z of the DP rounds")
    parser.add_argument("--only-quality", action="store_true", help="skip the cost table")
    parser.add_argument("--heldout", type=int, default=12, help="held-out inputs per language")
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
        for devices in [] if args.only_quality else args.devices:
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
        if not args.only_quality:
            Console().print(table)
        quality(settings, Path(tmp) / "fleet-quality", profile, args)


if __name__ == "__main__":
    main()
