"""What each dashboard page shows, read from the store in a few aggregate queries.

Pages stay fast on a large interaction log: counts are grouped in SQL, and live traffic
is summarised from the newest ``TRAFFIC_WINDOW`` rows only.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from kizuna.dashboard.charts import histogram
from kizuna.rollout.observe import current_traffic
from kizuna.store.models import (
    Adapter,
    FederatedRound,
    Interaction,
    LabellingPick,
    Run,
    RunKind,
)

TRAFFIC_WINDOW = 5000
HIGH_ENTROPY_NATS = 2.0
HEADLINE = (
    "style_accuracy",
    "content_preservation",
    "distinct_2",
    "latency_p50_ms",
    "latency_p95_ms",
)


@dataclass
class PersonaRow:
    """One persona on the overview."""

    persona: str
    stable: int | None
    canary: int | None
    canary_weight: float
    requests: int
    latest: int | None = None
    gates_passed: bool | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    trend: list[tuple[float, float]] = field(default_factory=list)  # (version, style)


def overview(session: Session, personas: list[str]) -> list[PersonaRow]:
    """Every persona: versions serving, traffic, the newest evaluated version's metrics."""
    counts: dict[str | None, int] = {
        persona: count
        for persona, count in session.execute(
            select(Interaction.persona, func.count()).group_by(Interaction.persona)
        )
    }
    evaluated: dict[str, list[Adapter]] = defaultdict(list)
    for adapter in session.scalars(select(Adapter).order_by(Adapter.persona, Adapter.version)):
        if adapter.metrics.get("style_accuracy") is not None:
            evaluated[adapter.persona].append(adapter)
    rows = []
    for persona in personas:
        traffic = current_traffic(session, persona)
        row = PersonaRow(
            persona, traffic.stable, traffic.canary, traffic.canary_weight, counts.get(persona, 0)
        )
        if evaluated[persona]:
            newest = evaluated[persona][-1]
            row.latest, row.gates_passed = newest.version, newest.metrics.get("gates_passed")
            row.metrics = {k: newest.metrics.get(k) for k in HEADLINE}
            row.trend = [
                (a.version, float(a.metrics["style_accuracy"])) for a in evaluated[persona]
            ]
        rows.append(row)
    return rows


@dataclass
class TrafficRow:
    """Live traffic of one persona over the newest requests."""

    persona: str
    requests: int
    per_minute: float
    latency_p50_ms: float
    latency_p95_ms: float
    entropy_counts: list[int]
    entropy_edges: list[float]
    high_entropy_share: list[tuple[float, float]]  # (hour index, share)
    feedback_rate: float
    thumbs_up_share: float | None


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(math.ceil(q * len(ordered)) - 1, 0)] if ordered else 0.0


def traffic(session: Session) -> list[TrafficRow]:
    """Rate, latency, entropy histogram, high-entropy share by hour, feedback per persona."""
    rows = session.execute(
        select(
            Interaction.persona,
            Interaction.created_at,
            Interaction.latency_ms,
            Interaction.entropy_mean,
            Interaction.feedback,
        )
        .where(Interaction.persona.is_not(None))
        .order_by(Interaction.id.desc())
        .limit(TRAFFIC_WINDOW)
    ).all()
    grouped: dict[str, list[Any]] = defaultdict(list)
    for row in rows:
        grouped[row.persona].append(row)
    result = []
    for persona, items in sorted(grouped.items()):
        times = [r.created_at for r in items]
        span_min = max((max(times) - min(times)).total_seconds() / 60, 1.0)
        entropies = [r.entropy_mean for r in items]
        counts, edges = histogram(entropies)
        hours: dict[datetime, list[bool]] = defaultdict(list)
        for r in items:
            hour = r.created_at.replace(minute=0, second=0, microsecond=0)
            hours[hour].append(r.entropy_mean > HIGH_ENTROPY_NATS)
        first = min(hours)
        share = [
            ((hour - first) / timedelta(hours=1), sum(flags) / len(flags))
            for hour, flags in sorted(hours.items())
        ]
        rated = [r.feedback for r in items if r.feedback is not None]
        result.append(
            TrafficRow(
                persona=persona,
                requests=len(items),
                per_minute=len(items) / span_min,
                latency_p50_ms=_quantile([r.latency_ms for r in items], 0.5),
                latency_p95_ms=_quantile([r.latency_ms for r in items], 0.95),
                entropy_counts=counts,
                entropy_edges=edges,
                high_entropy_share=share,
                feedback_rate=len(rated) / len(items),
                thumbs_up_share=sum(1 for f in rated if f > 0) / len(rated) if rated else None,
            )
        )
    return result


def latest_sample(session: Session) -> tuple[Run | None, list[LabellingPick]]:
    """The newest relabel run and the interactions it picked, in rank order."""
    run = session.scalar(
        select(Run).where(Run.kind == RunKind.RELABEL).order_by(Run.id.desc()).limit(1)
    )
    if run is None:
        return None, []
    picks = session.scalars(
        select(LabellingPick)
        .where(LabellingPick.run_id == run.id)
        .order_by(LabellingPick.persona, LabellingPick.rank)
        .limit(500)
    ).all()
    return run, list(picks)


@dataclass
class FederatedRunView:
    """A federated run with its rounds."""

    run: Run
    rounds: list[FederatedRound]

    @property
    def epsilon(self) -> float | None:
        """ε spent by the run (the last round's cumulative value)."""
        spent = [r.epsilon for r in self.rounds if r.epsilon is not None]
        return spent[-1] if spent else None


def federation(session: Session) -> tuple[list[FederatedRunView], dict[str, float]]:
    """Federated runs newest first, and ε spent per persona (summed over its runs)."""
    runs = session.scalars(
        select(Run).where(Run.kind == RunKind.FEDERATED).order_by(Run.id.desc()).limit(50)
    ).all()
    rounds: dict[int, list[FederatedRound]] = defaultdict(list)
    query = select(FederatedRound).where(FederatedRound.run_id.in_([r.id for r in runs]))
    for record in session.scalars(query.order_by(FederatedRound.round_number)):
        rounds[record.run_id].append(record)
    views = [FederatedRunView(run, rounds[run.id]) for run in runs]
    # Sequential composition across runs: an upper bound on what a device's data spent.
    spent: dict[str, float] = defaultdict(float)
    for view in views:
        if view.run.persona and view.epsilon is not None:
            spent[view.run.persona] += view.epsilon
    return views, dict(spent)


def retrain_runs(session: Session) -> list[Run]:
    """Retrain runs, newest first."""
    query = select(Run).where(Run.kind == RunKind.RETRAIN).order_by(Run.id.desc()).limit(50)
    return list(session.scalars(query))


def candidates(session: Session) -> list[Adapter]:
    """Versions that could be started as a canary, newest first."""
    query = select(Adapter).where(Adapter.status == "candidate").order_by(Adapter.id.desc())
    return list(session.scalars(query.limit(50)))
