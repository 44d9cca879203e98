"""The gates held against a candidate's report (offline) and its canary traffic (live)."""

from __future__ import annotations

from typing import Any

from kizuna.rollout.spec import Gates
from kizuna.rollout.state import LiveMetrics


def offline_failures(gates: Gates, metrics: dict[str, Any]) -> list[str]:
    """Why the candidate's evaluation report keeps it from traffic (empty: it may go)."""
    failures = []
    bounds = (
        ("style_accuracy", gates.min_style_accuracy, 1),
        ("content_preservation", gates.min_content_preservation, 1),
        ("latency_p95_ms", gates.max_latency_ms, -1),
    )
    for key, bound, sign in bounds:
        value = metrics.get(key)
        if not isinstance(value, int | float):
            failures.append(f"{key} missing from the report")
        elif sign * value < sign * bound:
            relation = "<" if sign > 0 else ">"
            failures.append(f"{key} {value:.3g} {relation} {bound:g}")
    if gates.require_report_gates:
        report_gates = metrics.get("gates") or {}
        failures += [f"report gate {name} failed" for name, ok in report_gates.items() if not ok]
    return failures


def live_problem(gates: Gates, canary: LiveMetrics, baseline: LiveMetrics) -> str | None:
    """Why the canary's live traffic says it is worse than stable, if it does."""
    if canary.latency_p95_ms is not None and canary.latency_p95_ms > gates.max_latency_ms:
        return f"live latency p95 {canary.latency_p95_ms:.0f} ms > {gates.max_latency_ms:g} ms"
    # Drift is judged only against a baseline with as much evidence as the canary needs.
    if (
        canary.entropy_mean is not None
        and baseline.entropy_mean is not None
        and baseline.requests >= gates.min_canary_requests
    ):
        drift = canary.entropy_mean - baseline.entropy_mean
        if drift > gates.max_entropy_drift:
            return (
                f"live mean entropy {canary.entropy_mean:.2f} is {drift:.2f} nats above "
                f"stable's {baseline.entropy_mean:.2f} (max drift {gates.max_entropy_drift:g})"
            )
    return None
