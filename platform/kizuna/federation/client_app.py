"""Kizuna's Flower ClientApp: one device's side of a round.

Messages use Flower's FitIns/FitRes record layout because SecAgg+ (``secaggplus_mod``)
reads and masks exactly that layout; both protection modes share it. The mod is applied
only to SecAgg+ messages, so the same app serves ``secure`` and ``robust`` runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from flwr.app import Context, Message
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common import recorddict_compat as compat

from kizuna.federation.manifest import DeviceManifest

log = logging.getLogger(__name__)
INSTRUCTIONS_KEY = "kizuna"


def device_dir(context: Context) -> Path:
    """The device's data dir, from the SuperNode's ``data-dir`` node config."""
    if "data-dir" not in context.node_config:
        raise ValueError("start the SuperNode with --node-config \"data-dir='<device dir>'\"")
    return Path(str(context.node_config["data-dir"]))


def train(msg: Message, context: Context) -> Message:
    """Train on local data and answer with the clipped update (weight 1: uniform mean)."""
    # Imported here: a ClientApp process starts per message, and only this stage trains;
    # SecAgg+'s key-exchange stages should not pay for importing torch and transformers.
    from kizuna.federation.task import RoundInstructions, keep_sent_update, local_update

    fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    instructions = RoundInstructions.decode(str(fitins.config[INSTRUCTIONS_KEY]))
    data_dir = device_dir(context)
    manifest = DeviceManifest.read(data_dir)
    result = local_update(data_dir, instructions, parameters_to_ndarrays(fitins.parameters))
    if manifest.keep_sent_updates:
        keep_sent_update(data_dir, instructions, result.update)
    log.info(
        "device %s round %d: %d examples, loss %.4f, update norm %.4g (clipped to %.4g)",
        manifest.device_id,
        instructions.round,
        result.examples,
        result.loss,
        result.norm_before_clip,
        instructions.clipping_norm,
    )
    fitres = FitRes(
        status=Status(code=Code.OK, message="ok"),
        parameters=ndarrays_to_parameters(result.update),
        # Every device weighs the same: DP's sensitivity bound assumes a uniform mean.
        num_examples=1,
        metrics={"device": manifest.device_id, "examples": result.examples, "loss": result.loss},
    )
    return Message(compat.fitres_to_recorddict(fitres, keep_input=False), reply_to=msg)


def secure_aggregation_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Run SecAgg+'s client side for messages of the SecAgg+ protocol, else pass through."""
    if RECORD_KEY_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, context, call_next)
    return call_next(msg, context)


def build_client_app(
    handler: Callable[[Message, Context], Message] = train, *, outer_mods: Sequence[Mod] = ()
) -> ClientApp:
    """The ClientApp around ``handler`` (tests wrap :func:`train` to play attackers);
    ``outer_mods`` see every message as it crosses the network (benchmarks count bytes)."""
    client_app = ClientApp(mods=[*outer_mods, secure_aggregation_mod])
    client_app.train()(handler)
    return client_app


app = build_client_app()
