"""How far an aggregate of LoRA factor updates is from the mean of the weight changes.

A LoRA module changes the base weight by B·A (times its scale, the same for every
module of an adapter, so it cancels in the ratio below). Device i moves (A, B) by
(ΔAᵢ, ΔBᵢ); its weight change is (B + ΔBᵢ)(A + ΔAᵢ) − BA. The relative aggregation error
‖mean(changeᵢ) − change(aggregate)‖ / ‖mean(changeᵢ)‖ is 0 (to float precision) when
only B travels, and grows with the spread of the devices' A updates when both do.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from kizuna.federation.updates import AdapterLayout, Arrays

Matrix = NDArray[np.float64]


def full_update(layout: AdapterLayout, sent: AdapterLayout, update: Arrays) -> Arrays:
    """``update`` over the ``sent`` tensors, as an update of every tensor (zeros elsewhere)."""
    by_name = dict(zip(sent.names, update, strict=True))
    return [
        by_name.get(name, np.zeros(shape, dtype=np.float32))
        for name, shape in zip(layout.names, layout.shapes, strict=True)
    ]


def weight_changes(layout: AdapterLayout, start: Arrays, update: Arrays) -> list[Matrix]:
    """The change of each LoRA module's B·A when ``update`` (every tensor) is added."""
    index = {name: i for i, name in enumerate(layout.names)}
    changes = []
    for name in layout.names:
        if "lora_A" not in name:
            continue
        a, b = index[name], index[name.replace("lora_A", "lora_B")]
        a0, b0 = start[a].astype(np.float64), start[b].astype(np.float64)
        a1, b1 = a0 + update[a], b0 + update[b]
        changes.append(b1 @ a1 - b0 @ a0)
    return changes


def aggregation_error(
    layout: AdapterLayout, start: Arrays, updates: Sequence[Arrays], aggregate: Arrays
) -> float:
    """Relative error of ``aggregate`` against the mean weight change of ``updates`` (all
    three over every tensor of ``layout``); 0 when the mean change is 0."""
    per_device = [weight_changes(layout, start, update) for update in updates]
    mean = [np.mean(module, axis=0) for module in zip(*per_device, strict=True)]
    combined = weight_changes(layout, start, aggregate)
    difference = sum(float(np.sum((m - c) ** 2)) for m, c in zip(mean, combined, strict=True))
    size = sum(float(np.sum(m**2)) for m in mean)
    return float(np.sqrt(difference / size)) if size > 0 else 0.0
