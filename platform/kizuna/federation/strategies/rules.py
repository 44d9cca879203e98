"""Aggregation rules over clipped updates, registered by name, with their DP sensitivity.

The arithmetic is Flower's (``flwr.server.strategy.aggregate``). Each rule also states
its L2 sensitivity to one device whose update is clipped to norm ``C``, so the noise can
be calibrated to the rule actually used:

- ``fedavg``: the mean of ``n`` updates moves by at most ``C/n`` (replace-one, fixed ``n``).
- ``trimmed-mean`` (``k`` values kept per coordinate): one device can shift each
  coordinate's kept set by one value; summed over coordinates the shift is bounded by the
  norms of all updates, ``2C·√n / k``.
- ``median``: the same bound with ``k = 1``, ``2C·√n``.
- ``krum``: the output is one update, so it can change to any other, ``2C``.
- ``multi-krum`` (the default): the mean of the ``n − f`` updates with the best Krum
  scores (``f`` = ``byzantine``), so far-off updates are dropped whole and the rest are
  averaged. Any mean of updates inside the ``C``-ball stays inside it: ``2C``.

The robust rules are much more sensitive than the mean: privacy costs more noise there,
which is the price of seeing individual updates to reject bad ones.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from flwr.server.strategy.aggregate import (
    aggregate,
    aggregate_krum,
    aggregate_median,
    aggregate_trimmed_avg,
)

from kizuna.federation.updates import Arrays


@dataclass(frozen=True)
class AggregationRule:
    """How updates are combined and how far one device can move the result."""

    name: str
    combine: Callable[[list[Arrays], float, int], Arrays]
    #: L2 sensitivity in units of the clipping norm, for ``n`` updates.
    sensitivity: Callable[[int, float], float]


def _as_float32(arrays: list[np.typing.NDArray[np.floating]]) -> Arrays:
    return [np.asarray(array, dtype=np.float32) for array in arrays]


def _mean(updates: list[Arrays], _trim: float, _byzantine: int) -> Arrays:
    return _as_float32(aggregate([(update, 1) for update in updates]))


def _trimmed_mean(updates: list[Arrays], trim: float, _byzantine: int) -> Arrays:
    return _as_float32(aggregate_trimmed_avg([(update, 1) for update in updates], trim))


def _median(updates: list[Arrays], _trim: float, _byzantine: int) -> Arrays:
    return _as_float32(aggregate_median([(update, 1) for update in updates]))


def _krum(updates: list[Arrays], _trim: float, byzantine: int) -> Arrays:
    return _as_float32(aggregate_krum([(update, 1) for update in updates], byzantine, 0))


def _multi_krum(updates: list[Arrays], _trim: float, byzantine: int) -> Arrays:
    keep = max(1, len(updates) - byzantine)
    return _as_float32(aggregate_krum([(update, 1) for update in updates], byzantine, keep))


def _kept(n: int, trim: float) -> int:
    return max(1, n - 2 * int(trim * n))


RULES: dict[str, AggregationRule] = {
    rule.name: rule
    for rule in (
        AggregationRule("fedavg", _mean, lambda n, _trim: 1.0 / n),
        AggregationRule(
            "trimmed-mean", _trimmed_mean, lambda n, trim: 2.0 * math.sqrt(n) / _kept(n, trim)
        ),
        AggregationRule("median", _median, lambda n, _trim: 2.0 * math.sqrt(n)),
        AggregationRule("krum", _krum, lambda _n, _trim: 2.0),
        AggregationRule("multi-krum", _multi_krum, lambda _n, _trim: 2.0),
    )
}


def rule_named(name: str) -> AggregationRule:
    """The registered rule ``name``; the error lists the known ones."""
    try:
        return RULES[name]
    except KeyError:
        raise ValueError(f"unknown aggregation rule {name!r}; known: {', '.join(RULES)}") from None
