"""The work list of relabel runs: which interactions were picked, why, and their targets."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from kizuna.store.models import LabellingPick, PickOutcome


@dataclass(frozen=True, kw_only=True)
class PickRecord:
    """A sampler pick, ready to store."""

    interaction_id: int
    persona: str
    strength: float
    score: float
    rank: int
    max_similarity: float
    reason: str
    input: str


def record_picks(session: Session, *, run_id: int, picks: Iterable[PickRecord]) -> int:
    """Store a run's picks as pending work; returns how many were stored."""
    rows = [
        LabellingPick(
            run_id=run_id,
            interaction_id=pick.interaction_id,
            persona=pick.persona,
            strength=pick.strength,
            score=pick.score,
            rank=pick.rank,
            max_similarity=pick.max_similarity,
            reason=pick.reason,
            input=pick.input,
            outcome=PickOutcome.PENDING,
        )
        for pick in picks
    ]
    session.add_all(rows)
    session.flush()
    return len(rows)


def picks_of(
    session: Session, *, run_id: int, outcome: PickOutcome | None = None
) -> Sequence[LabellingPick]:
    """A run's picks in the order they were picked."""
    query = select(LabellingPick).where(LabellingPick.run_id == run_id)
    if outcome is not None:
        query = query.where(LabellingPick.outcome == outcome)
    return session.scalars(query.order_by(LabellingPick.id)).all()


def set_targets(session: Session, targets: Mapping[int, str]) -> None:
    """Record the teacher's target for picks (by pick id); they become ``labelled``."""
    for pick_id, target in targets.items():
        pick = session.get_one(LabellingPick, pick_id)
        pick.target = target
        pick.outcome = PickOutcome.LABELLED
    session.flush()


def set_outcomes(session: Session, outcomes: Mapping[int, str | None]) -> None:
    """Pick id → drop reason (None: kept in the dataset)."""
    for pick_id, drop_reason in outcomes.items():
        pick = session.get_one(LabellingPick, pick_id)
        pick.outcome = PickOutcome.KEPT if drop_reason is None else PickOutcome.DROPPED
        pick.drop_reason = drop_reason
    session.flush()
