"""``robust`` mode: the server sees every update, rejects the invalid, clips the rest and
combines them with a registered robust rule."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from flwr.app import Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.common import parameters_to_ndarrays
from flwr.compat.common import recorddict_compat as compat
from flwr.serverapp import Grid

from kizuna.federation.config import FederationConfig
from kizuna.federation.strategies.outcome import RoundOutcome
from kizuna.federation.strategies.rules import rule_named
from kizuna.federation.updates import AdapterLayout, Arrays, Rejection, clipped, l2_norm

log = logging.getLogger(__name__)


def screen(
    replies: Sequence[tuple[str, Arrays | str]], layout: AdapterLayout, config: FederationConfig
) -> tuple[list[Arrays], list[Rejection], list[float]]:
    """Split (device, update or failure) pairs into clipped valid updates and rejections."""
    accepted: list[Arrays] = []
    rejected: list[Rejection] = []
    norms: list[float] = []
    for device, update in replies:
        if isinstance(update, str):
            reason = f"no update: {update}"
        else:
            problem = layout.problem(update, max_norm=None)
            if problem is None:
                norms.append(l2_norm(update))
                accepted.append(clipped(update, config.clipping_norm))
                continue
            reason = problem
        log.warning("rejected the update of device %s: %s", device, reason)
        rejected.append(Rejection(device=device, reason=reason))
    return accepted, rejected, norms


def combine(accepted: list[Arrays], config: FederationConfig) -> Arrays:
    """The configured rule over clipped updates."""
    return rule_named(config.rule).combine(accepted, config.trim_fraction, config.byzantine)


def robust_round(
    grid: Grid,
    node_ids: Sequence[int],
    content: RecordDict,
    *,
    round_number: int,
    layout: AdapterLayout,
    config: FederationConfig,
) -> RoundOutcome:
    """Send the round to every device, screen what comes back, combine the valid updates."""
    messages = [
        Message(
            content=content,
            dst_node_id=node_id,
            message_type=MessageType.TRAIN,
            group_id=str(round_number),
        )
        for node_id in node_ids
    ]
    replies: list[tuple[str, Arrays | str]] = []
    for reply in grid.send_and_receive(messages, timeout=config.stage_timeout_s):
        node = f"node-{reply.metadata.src_node_id}"
        if reply.has_error():
            replies.append((node, reply.error.reason or "the device failed"))
            continue
        fitres = compat.recorddict_to_fitres(reply.content, keep_input=False)
        device = str(fitres.metrics.get("device", node))
        replies.append((device, parameters_to_ndarrays(fitres.parameters)))
    answered = {device for device, _ in replies}
    missing = len(node_ids) - len(answered)
    accepted, rejected, norms = screen(replies, layout, config)
    if len(accepted) < config.min_devices:
        return RoundOutcome(
            aggregate=None,
            participants=len(accepted),
            rejected=rejected,
            update_norms=norms,
            note=f"{len(accepted)} valid updates (< min_devices {config.min_devices}); "
            f"{missing} devices did not answer",
        )
    return RoundOutcome(
        aggregate=combine(accepted, config),
        participants=len(accepted),
        rejected=rejected,
        update_norms=norms,
        updates=accepted,
        note=f"{missing} devices did not answer" if missing else "",
    )
