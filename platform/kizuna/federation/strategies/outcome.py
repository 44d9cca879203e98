"""What one round of update collection produced."""

from __future__ import annotations

from dataclasses import dataclass, field

from kizuna.federation.updates import Arrays, Rejection


@dataclass
class RoundOutcome:
    """The combined update (None when the round could not complete) and its bookkeeping."""

    aggregate: Arrays | None
    participants: int
    rejected: list[Rejection] = field(default_factory=list)
    #: Norms of the individual updates; empty in ``secure`` mode, where none is visible.
    update_norms: list[float] = field(default_factory=list)
    #: The valid (clipped) updates the rule combined; empty in ``secure`` mode.
    updates: list[Arrays] = field(default_factory=list)
    note: str = ""
    #: How many times the round was played to get this outcome.
    attempts: int = 1
