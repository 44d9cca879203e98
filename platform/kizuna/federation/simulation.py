"""Flower's Simulation Runtime with Kizuna's own ServerApp and ClientApp logic.

Many virtual devices in one process tree (Ray actors), for benchmarks and attack tests
that need more devices than SuperNode processes fit on one machine. The rounds, the
SecAgg+ protocol, validation and noise are the same code the Deployment Engine runs;
only the transport differs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp.typing import Mod
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation

from kizuna.config import Settings
from kizuna.federation.client_app import build_client_app, train
from kizuna.federation.config import FederationConfig
from kizuna.store.models import Adapter

Handler = Callable[[Message, Context], Message]


def on_device(devices_root: Path, handler: Handler = train) -> Handler:
    """``handler`` run as virtual device ``partition-id`` (its data dir under the root)."""

    def as_device(msg: Message, context: Context) -> Message:
        partition = int(context.node_config["partition-id"])
        context.node_config["data-dir"] = str(devices_root / f"device-{partition:03d}")
        return handler(msg, context)

    return as_device


def simulate(
    config: FederationConfig,
    settings: Settings,
    *,
    devices_root: Path,
    devices: int,
    handler: Handler = train,
    outer_mods: Sequence[Mod] = (),
    cpus_per_device: float = 1.0,
) -> Adapter:
    """Run ``config``'s rounds over ``devices`` virtual devices; the candidate it registers."""
    from kizuna.federation.server_app import run_federation

    registered: list[Adapter] = []
    server = ServerApp()

    @server.main()
    def _main(grid: Grid, context: Context) -> None:
        registered.append(run_federation(grid, context, config, settings))

    run_simulation(
        server_app=server,
        client_app=build_client_app(on_device(devices_root, handler), outer_mods=outer_mods),
        num_supernodes=devices,
        backend_config={"client_resources": {"num_cpus": cpus_per_device, "num_gpus": 0.0}},
    )
    if not registered:
        raise RuntimeError("the simulated federation registered no candidate (see its log)")
    return registered[0]
