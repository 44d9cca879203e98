"""Gates: the checks a candidate's evaluation must pass before it may reach traffic."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

from kizuna.evaluation.candidate import CANDIDATE, QUANTIZED, RULES, STABLE, CandidateEvaluation
from kizuna.evaluation.thresholds import GateThresholds


@dataclass(frozen=True)
class GateResult:
    """One check: the measured value, the bound it was held to, and whether it held."""

    name: str
    value: float | None
    bound: float | None
    passed: bool
    detail: str


def _at_least(name: str, value: float | None, bound: float, detail: str) -> GateResult:
    passed = value is not None and value >= bound
    return GateResult(name=name, value=value, bound=bound, passed=passed, detail=detail)


def _at_most(name: str, value: float | None, bound: float, detail: str) -> GateResult:
    passed = value is not None and value <= bound
    return GateResult(name=name, value=value, bound=bound, passed=passed, detail=detail)


def check_gates(
    evaluation: CandidateEvaluation, thresholds: GateThresholds, *, on_gpu: bool
) -> list[GateResult]:
    """Every gate of the design's goals plus no-regression against stable and int8."""
    candidate = evaluation.variants[CANDIDATE]
    gates = [
        _at_least(
            "style_accuracy",
            candidate.style_accuracy,
            thresholds.min_style_accuracy,
            "share of outputs the persona classifier attributes to the persona",
        ),
        _at_least(
            "content_preservation",
            candidate.content_preservation,
            thresholds.min_content_preservation,
            "share of outputs that keep every number, name and negation and stay close "
            "in meaning (MiniLM cosine en / chrF zh above the calibrated floor)",
        ),
        _at_most(
            "loop_rate",
            candidate.loop_rate,
            thresholds.max_loop_rate,
            "share of outputs that repeat a 4-gram three times or more",
        ),
        _at_most(
            "leakage_rate",
            candidate.leakage_rate,
            thresholds.max_leakage_rate,
            "share of outputs that echo the prompt's instruction",
        ),
        _at_least(
            "distinct2_vs_rules",
            candidate.distinct_2,
            thresholds.min_distinct2_vs_rules * evaluation.variants[RULES].distinct_2,
            f"distinct-2 at least {thresholds.min_distinct2_vs_rules:g} × the rules teacher's",
        ),
        _at_most(
            "latency_p50_ms",
            candidate.latency_p50_ms,
            thresholds.max_latency_ms_gpu if on_gpu else thresholds.max_latency_ms_cpu,
            f"single short transform on {'GPU' if on_gpu else 'CPU'}",
        ),
    ]
    curve = evaluation.strength_curve[CANDIDATE]
    points = [curve[s] for s in sorted(curve)]
    rises = all(b > a for a, b in pairwise(points))
    gates.append(
        GateResult(
            name="strength_monotonic",
            value=points[-1] - points[0],
            bound=None,
            passed=rises,
            detail="persona probability rises at every step of strength "
            + " < ".join(f"{s:g}" for s in sorted(curve)),
        )
    )
    if STABLE in evaluation.variants:
        stable = evaluation.variants[STABLE]
        gates += [
            _at_least(
                "style_vs_stable",
                candidate.style_accuracy,
                stable.style_accuracy,
                "style accuracy no lower than the stable adapter's",
            ),
            _at_least(
                "content_vs_stable",
                candidate.content_preservation,
                stable.content_preservation - thresholds.max_content_drop_vs_stable,
                f"content preservation at most {thresholds.max_content_drop_vs_stable:g} "
                "below the stable adapter's",
            ),
        ]
    if QUANTIZED in evaluation.variants:
        gates.append(
            _at_least(
                "int8_style",
                evaluation.variants[QUANTIZED].style_accuracy,
                candidate.style_accuracy - thresholds.max_style_drop_quantized,
                f"the int8 variant loses at most {thresholds.max_style_drop_quantized:g} "
                "style accuracy",
            )
        )
    return gates
