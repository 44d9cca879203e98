"""Gates on a candidate's evaluation, and the reports a person and a machine read."""

import json
import math
import re
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch

from kizuna.datasets.pairs import split_of
from kizuna.evaluation.candidate import (
    CANDIDATE,
    QUANTIZED,
    RULES,
    STABLE,
    CandidateEvaluation,
    VariantMetrics,
    heldout_inputs,
)
from kizuna.evaluation.fluency import perplexity
from kizuna.evaluation.gates import check_gates
from kizuna.evaluation.report import render_html, write_report
from kizuna.evaluation.thresholds import GateThresholds
from kizuna.model.base import load_base_model, load_tokenizer
from kizuna.model.engine import Engine
from kizuna.teacher.base import language_of

GOOD = VariantMetrics(
    style_accuracy=0.9,
    style_probability=0.8,
    content_preservation=0.92,
    loop_rate=0.0,
    leakage_rate=0.0,
    length_ratio=1.3,
    distinct_1=0.7,
    distinct_2=0.9,
    perplexity=12.0,
    latency_p50_ms=300.0,
    latency_p95_ms=420.0,
)
STABLE_METRICS = replace(GOOD, style_accuracy=0.5, content_preservation=0.93, latency_p50_ms=None)
RULES_METRICS = replace(GOOD, distinct_2=0.6, latency_p50_ms=None)


def _evaluation(candidate: VariantMetrics = GOOD, **changes: object) -> CandidateEvaluation:
    variants = {
        CANDIDATE: candidate,
        STABLE: STABLE_METRICS,
        RULES: RULES_METRICS,
        QUANTIZED: replace(candidate, style_accuracy=candidate.style_accuracy - 0.01),
    }
    evaluation = CandidateEvaluation(
        persona="tsundere",
        strength=0.6,
        inputs=4,
        variants=variants,
        strength_curve={CANDIDATE: {0.3: 0.4, 0.6: 0.6, 1.0: 0.9}, STABLE: {0.3: 0.1, 0.6: 0.2}},
        by_strength={CANDIDATE: {0.3: {"style_accuracy": 0.7, "content_preservation": 0.95}}},
        samples=[{"input": "<b>hi</b>", CANDIDATE: "Hmph, <b>hi</b>"}],
    )
    for key, value in changes.items():
        setattr(evaluation, key, value)
    return evaluation


def _failed(evaluation: CandidateEvaluation, *, on_gpu: bool = False) -> set[str]:
    return {
        g.name for g in check_gates(evaluation, GateThresholds(), on_gpu=on_gpu) if not g.passed
    }


def test_a_candidate_meeting_every_goal_passes_every_gate() -> None:
    gates = check_gates(_evaluation(), GateThresholds(), on_gpu=False)
    assert {g.name for g in gates} == {
        "style_accuracy",
        "content_preservation",
        "loop_rate",
        "leakage_rate",
        "distinct2_vs_rules",
        "latency_p50_ms",
        "strength_monotonic",
        "style_vs_stable",
        "content_vs_stable",
        "int8_style",
    }
    assert all(g.passed for g in gates)


@pytest.mark.parametrize(
    ("change", "failing"),
    [
        ({"style_accuracy": 0.79}, {"style_accuracy"}),
        ({"style_accuracy": 0.4}, {"style_accuracy", "style_vs_stable"}),
        ({"content_preservation": 0.905}, {"content_vs_stable"}),
        ({"content_preservation": 0.84}, {"content_preservation", "content_vs_stable"}),
        ({"loop_rate": 0.03}, {"loop_rate"}),
        ({"leakage_rate": 0.01}, {"leakage_rate"}),
        ({"distinct_2": 0.77}, {"distinct2_vs_rules"}),  # 1.3 x 0.6 = 0.78
        ({"latency_p50_ms": 501.0}, {"latency_p50_ms"}),
        ({"latency_p50_ms": None}, {"latency_p50_ms"}),  # not measured is not passed
    ],
)
def test_each_gate_fails_on_its_own_bound(change: dict[str, object], failing: set[str]) -> None:
    assert _failed(_evaluation(replace(GOOD, **change))) == failing  # type: ignore[arg-type]


def test_latency_bound_is_tighter_on_gpu() -> None:
    assert _failed(_evaluation(), on_gpu=True) == {"latency_p50_ms"}


def test_strength_must_raise_the_style_score_at_every_step() -> None:
    flat = {CANDIDATE: {0.3: 0.4, 0.6: 0.4, 1.0: 0.9}}
    assert _failed(_evaluation(strength_curve=flat)) == {"strength_monotonic"}


def test_the_int8_variant_may_lose_at_most_two_points_of_style() -> None:
    evaluation = _evaluation()
    evaluation.variants[QUANTIZED] = replace(GOOD, style_accuracy=0.87)
    assert _failed(evaluation) == {"int8_style"}


def test_gates_without_a_stable_or_int8_variant_skip_those_comparisons() -> None:
    evaluation = _evaluation()
    del evaluation.variants[STABLE], evaluation.variants[QUANTIZED]
    names = {g.name for g in check_gates(evaluation, GateThresholds(), on_gpu=False)}
    assert not names & {"style_vs_stable", "content_vs_stable", "int8_style"}


def _report(evaluation: CandidateEvaluation) -> dict[str, object]:
    return {
        "persona": "tsundere",
        "run_id": 7,
        "summary": "a summary",
        "classifier_heldout_accuracy": 0.97,
        "evaluation": evaluation.to_json(),
        "gates": [asdict(g) for g in check_gates(evaluation, GateThresholds(), on_gpu=False)],
        "sizes": {"adapter_fp32_bytes": 100, "adapter_int8_bytes": 30},
        "training": {"history": [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]},
        "lineage": {"source": "retrain", "teacher": {"targets": ["rules"]}},
    }


def test_reports_are_json_and_one_self_contained_html_page(tmp_path: Path) -> None:
    json_path, html_path = write_report(_report(_evaluation()), tmp_path / "evaluation")
    stored = json.loads(json_path.read_text())
    assert stored["evaluation"]["strength_curve"]["candidate"] == {"0.3": 0.4, "0.6": 0.6, "1": 0.9}
    page = html_path.read_text()
    # Three plots (metrics, strength curve, loss curve), all inline; nothing to fetch.
    assert len(re.findall(r'<img alt="plot" src="data:image/png;base64,', page)) == 3
    assert not re.search(r'(src|href)="(?!data:)', page)
    assert "&lt;b&gt;hi&lt;/b&gt;" in page and "<b>hi</b>" not in page
    assert "FAIL" not in page and page.count("PASS") == 10
    assert "<td>candidate</td><td>0.3</td><td>0.700</td><td>0.950</td>" in page
    assert render_html(stored) == page  # re-rendered from the stored JSON alone


def test_heldout_inputs_are_test_split_sentences_of_both_languages() -> None:
    inputs = heldout_inputs(5)
    assert len(inputs) == 10
    assert all(split_of(text) == "test" for text in inputs)
    assert [language_of(t) for t in inputs[:2]] == ["en", "zh"]


def test_perplexity_is_the_exponentiated_mean_token_loss(tiny_model_dir: Path) -> None:
    model = load_base_model(str(tiny_model_dir), device=torch.device("cpu"))
    tokenizer = load_tokenizer(str(tiny_model_dir))
    texts = ["Hmph, fine.", "The meeting moved to Thursday."]
    losses, count = 0.0, 0
    for text in texts:
        ids = [tokenizer.bos_token_id, *tokenizer(text, add_special_tokens=False)["input_ids"]]
        with torch.no_grad():
            output = model(input_ids=torch.tensor([ids]), labels=torch.tensor([ids]))
        losses += float(output.loss) * (len(ids) - 1)
        count += len(ids) - 1
    expected = math.exp(losses / count)
    engine = Engine(model, tokenizer, max_adapters=1)
    assert perplexity(engine, texts) == pytest.approx(expected, rel=1e-4)
    with pytest.raises(ValueError, match="no text"):
        perplexity(engine, [""])
