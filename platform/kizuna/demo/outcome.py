"""What the demo changed: the persona's stable adapter before and after, side by side.

Offline numbers come from the candidate's evaluation report, which scored the old stable
adapter and the candidate on the same held-out inputs; live numbers come from the
interaction log, per version that answered; ε from the adapters' lineage.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.table import Table

from kizuna.artifacts import fetch_directory
from kizuna.config import Settings
from kizuna.rollout.observe import live_metrics
from kizuna.rollout.state import LiveMetrics
from kizuna.store.db import open_store, transaction
from kizuna.store.interactions import served_by
from kizuna.store.models import Adapter

REPORT_JSON = Path("evaluation") / "report.json"


@dataclass(frozen=True)
class Version:
    """One adapter version as the table needs it."""

    version: int
    epsilon: float | None
    live: LiveMetrics


@dataclass
class DemoOutcome:
    """Before and after, the candidate's report, and how long each stage took."""

    persona: str
    before: Version
    after: Version
    report: dict[str, Any]
    report_html: str
    rollout_phase: str
    stage_seconds: dict[str, float] = field(default_factory=dict)
    wall_seconds: float = 0.0

    def table(self) -> Table:
        """The before/after table."""
        variants = self.report["evaluation"]["variants"]
        old, new = variants.get("stable", {}), variants["candidate"]
        table = Table(
            "",
            f"before: {self.persona} v{self.before.version}",
            f"after: {self.persona} v{self.after.version}",
            title=f"{self.persona}: the stable adapter before and after one turn of the loop",
        )
        for label, key in (
            ("style accuracy", "style_accuracy"),
            ("content preservation", "content_preservation"),
            ("distinct-2", "distinct_2"),
        ):
            table.add_row(label, _number(old.get(key)), _number(new.get(key)))
        table.add_row(
            "latency p50, offline (ms)",
            _number(old.get("latency_p50_ms"), digits=0),
            _number(new.get("latency_p50_ms"), digits=0),
        )
        table.add_row(
            "latency p95, live (ms)",
            _number(self.before.live.latency_p95_ms, digits=0),
            _number(self.after.live.latency_p95_ms, digits=0),
        )
        table.add_row(
            "mean token entropy, live",
            _number(self.before.live.entropy_mean),
            _number(self.after.live.entropy_mean),
        )
        table.add_row(
            "live requests", str(self.before.live.requests), str(self.after.live.requests)
        )
        table.add_row("ε (δ = 1e-5)", _epsilon(self.before.epsilon), _epsilon(self.after.epsilon))
        return table

    def failed_gates(self) -> list[str]:
        """The offline gates the candidate's report failed."""
        return [g["name"] for g in self.report["gates"] if not g["passed"]]

    def stage_table(self) -> Table:
        """Wall time per stage (relabel and federate run side by side)."""
        table = Table("stage", "seconds", title="wall time")
        for name, seconds in self.stage_seconds.items():
            table.add_row(name, f"{seconds:.0f}")
        table.add_row("whole loop", f"{self.wall_seconds:.0f}", style="bold")
        return table


def _number(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _epsilon(value: float | None) -> str:
    return "none spent" if value is None else f"{value:.3g}"


def epsilon_of(adapter: Adapter) -> float | None:
    """The privacy budget an adapter's weights carry from federated rounds, if any."""
    lineage = adapter.lineage
    if lineage.get("source") == "federated":
        return lineage.get("epsilon")
    warm = lineage.get("warm_start") or {}
    return warm.get("epsilon")


def live_for(settings: Settings, persona: str, version: int, since: datetime) -> LiveMetrics:
    """Live metrics of what ``version`` answered since ``since``."""
    sessions = open_store(settings.resolved_database_url)
    with transaction(sessions) as session:
        return live_metrics(served_by(session, persona=persona, version=version, since=since))


def candidate_report(settings: Settings, candidate: Adapter) -> dict[str, Any]:
    """The candidate's evaluation report, read from its sha256-checked artifact."""
    directory = fetch_directory(
        candidate.artifact_url, sha256=candidate.sha256, cache_dir=settings.adapter_cache_dir
    )
    report: dict[str, Any] = json.loads((directory / REPORT_JSON).read_text(encoding="utf-8"))
    return report
