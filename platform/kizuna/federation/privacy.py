"""Differential privacy of the published aggregate: Gaussian noise and its budget.

Each round releases ``aggregate + N(0, (z·S)²)`` where ``S`` is the L2 sensitivity of the
aggregation rule to one device (every update clipped to norm ``C`` first) and ``z`` the
noise multiplier. Every device takes part in every round (no sampling amplification is
claimed), so ``R`` rounds compose ``R`` Gaussian mechanisms of multiplier ``z``; Google's
RDP accountant (``dp-accounting``) turns that into ε at the configured δ.
"""

from __future__ import annotations

import math

import dp_accounting
from dp_accounting.rdp import rdp_privacy_accountant
from flwr.supercore.differential_privacy import add_gaussian_noise_inplace

from kizuna.federation.updates import Arrays


def add_noise(arrays: Arrays, *, std: float) -> Arrays:
    """A copy of ``arrays`` with independent N(0, std²) noise on every coordinate."""
    noised = [array.copy() for array in arrays]
    if std > 0:
        add_gaussian_noise_inplace(noised, std)
    return noised


def epsilon(*, noise_multiplier: float, rounds: int, delta: float) -> float:
    """ε after ``rounds`` noised releases at ``delta`` (∞ without noise, 0 before any)."""
    if rounds == 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    accountant = rdp_privacy_accountant.RdpAccountant()
    accountant.compose(
        dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(noise_multiplier), rounds)
    )
    return float(accountant.get_epsilon(delta))
