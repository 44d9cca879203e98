"""Evaluating a candidate adapter against the stable one on held-out inputs.

Every variant answers the same held-out neutral inputs (the authored corpus's test
split in both languages, so no training input is among them) through the serving
engine: the candidate and the stable adapter at each strength in one mixed batch, the
int8 variant on an int8 engine, and the rules teacher as the reference for diversity.
Each variant's outputs are scored for style (the persona judge), content (facts kept
and meaning close, see
:mod:`kizuna.datasets.content`), loops, prompt leakage, length ratio, diversity
(distinct-1/2) and fluency (perplexity under the base model), overall and per
language; latency is timed on single short transforms, as a user would send them.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from kizuna.datasets.content import ContentCheck
from kizuna.datasets.corpus import CORPUS_STRENGTHS
from kizuna.datasets.persona_corpus import LANGUAGES, heldout_texts
from kizuna.evaluation.classifier import PersonaClassifier
from kizuna.evaluation.fluency import perplexity
from kizuna.evaluation.metrics import (
    content_preservation,
    distinct_n,
    leakage_rate,
    length_ratio,
    loop_rate,
    style_accuracy,
)
from kizuna.model.engine import Engine, EngineRequest
from kizuna.model.generation import Generation, SamplingParams
from kizuna.model.prompts import prompt_ids, transform_messages
from kizuna.personas.schema import PersonaProfile
from kizuna.teacher.base import StyleRequest, language_of
from kizuna.teacher.rules import RulesTeacher

#: Engine adapter names the evaluation expects to be resident.
CANDIDATE, STABLE = "candidate", "stable"
QUANTIZED, RULES = "candidate-int8", "rules"
_BATCH = 16


@dataclass(frozen=True)
class VariantMetrics:
    """One variant's scores on the held-out inputs at the headline strength."""

    style_accuracy: float
    style_probability: float
    content_preservation: float
    loop_rate: float
    leakage_rate: float
    length_ratio: float
    distinct_1: float
    distinct_2: float
    perplexity: float | None  # None when every output was empty
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None


@dataclass(frozen=True)
class EvaluationPlan:
    """What to evaluate on: inputs, strengths, generation length, latency samples."""

    inputs: list[str]
    strength: float = 0.6
    strengths: tuple[float, ...] = CORPUS_STRENGTHS
    max_new_tokens: int = 48
    latency_samples: int = 8

    def __post_init__(self) -> None:
        if not self.inputs:
            raise ValueError("no evaluation inputs")
        if self.strength not in self.strengths:
            raise ValueError(f"strength {self.strength} is not one of {self.strengths}")


@dataclass
class CandidateEvaluation:
    """The numbers behind a candidate's report."""

    persona: str
    strength: float
    inputs: int
    variants: dict[str, VariantMetrics]
    #: variant -> strength -> mean persona probability (the monotonicity curve).
    strength_curve: dict[str, dict[float, float]]
    #: variant -> strength -> style accuracy and content preservation at that strength.
    by_strength: dict[str, dict[float, dict[str, float]]] = field(default_factory=dict)
    #: variant -> language -> style, content, loops, leakage, length at the headline.
    by_language: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    samples: list[dict[str, str]] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        """Plain JSON types (strength keys as strings)."""
        data = asdict(self)
        for key in ("strength_curve", "by_strength"):
            data[key] = {
                variant: {f"{s:g}": value for s, value in table.items()}
                for variant, table in getattr(self, key).items()
            }
        return data


def heldout_inputs(per_language: int) -> list[str]:
    """The first held-out authored inputs of each language, interleaved en/zh."""
    english, chinese = (heldout_texts(language)[:per_language] for language in LANGUAGES)
    return [text for pair in zip(english, chinese, strict=True) for text in pair]


def generate_transforms(
    engine: Engine, rows: Sequence[tuple[str, str, float]], params: SamplingParams | int
) -> list[Generation]:
    """Transforms of (adapter, input, strength) rows, batched across adapters; an int is
    greedy decoding of that many tokens at most."""
    if isinstance(params, int):
        params = SamplingParams(max_new_tokens=params, temperature=0.0)
    outputs: list[Generation] = []
    for start in range(0, len(rows), _BATCH):
        requests = [
            EngineRequest(
                prompt=prompt_ids(engine.tokenizer, transform_messages(text)),
                mix={adapter: 1.0},
                strength=strength,
                params=params,
            )
            for adapter, text, strength in rows[start : start + _BATCH]
        ]
        outputs.extend(engine.generate(requests))
    return outputs


def _generate(engine: Engine, rows: Sequence[tuple[str, str, float]], tokens: int) -> list[str]:
    return [generation.text for generation in generate_transforms(engine, rows, tokens)]


def _latencies(engine: Engine, adapter: str, plan: EvaluationPlan) -> tuple[float, float]:
    """p50 and p95 in ms of single transforms of the shortest inputs, after one warm-up."""
    shortest = sorted(plan.inputs, key=len)[: plan.latency_samples]
    rows = [(adapter, text, plan.strength) for text in shortest]
    _generate(engine, rows[:1], plan.max_new_tokens)
    timings: list[float] = []
    for row in rows:
        started = time.perf_counter()
        _generate(engine, [row], plan.max_new_tokens)
        timings.append((time.perf_counter() - started) * 1000)
    if len(timings) < 2:
        return timings[0], timings[0]
    cuts = statistics.quantiles(timings, n=20, method="inclusive")
    return statistics.median(timings), cuts[18]


@dataclass(frozen=True)
class Scorers:
    """What scores outputs: the persona judge and the content check."""

    classifier: PersonaClassifier
    content: ContentCheck


def evaluate_candidate(
    engine: Engine,
    persona: PersonaProfile,
    plan: EvaluationPlan,
    scorers: Scorers,
    *,
    quantized_engine: Engine | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> CandidateEvaluation:
    """Score the resident ``candidate`` (and ``stable``, when resident) adapters.

    ``quantized_engine`` holds the int8 variant under the name ``candidate`` on an int8
    base; it is scored at the headline strength.
    """
    stage = on_stage or (lambda _: None)
    adapters = [name for name in (CANDIDATE, STABLE) if name in engine.resident]
    if CANDIDATE not in adapters:
        raise ValueError("the engine has no 'candidate' adapter loaded")
    inputs = plan.inputs
    stage(f"generating {len(adapters) * len(plan.strengths) * len(inputs)} outputs")
    rows = [(a, text, s) for a in adapters for s in plan.strengths for text in inputs]
    generated = _generate(engine, rows, plan.max_new_tokens)
    outputs: dict[tuple[str, float], list[str]] = {}
    for (adapter, _, strength), text in zip(rows, generated, strict=True):
        outputs.setdefault((adapter, strength), []).append(text)
    headline = {adapter: outputs[(adapter, plan.strength)] for adapter in adapters}
    headline[RULES] = RulesTeacher().relabel(
        [StyleRequest(text, persona, plan.strength) for text in inputs]
    )
    if quantized_engine is not None:
        stage("generating with the int8 variant")
        headline[QUANTIZED] = _generate(
            quantized_engine, [(CANDIDATE, t, plan.strength) for t in inputs], plan.max_new_tokens
        )

    stage("scoring style, content, diversity and fluency")

    def style_and_content(texts: list[str], sources: list[str]) -> dict[str, float]:
        return {
            "style_accuracy": style_accuracy(scorers.classifier, texts, persona.id),
            "style_probability": statistics.mean(
                scorers.classifier.persona_score(texts, persona.id)
            ),
            "content_preservation": content_preservation(scorers.content, sources, texts),
            "loop_rate": loop_rate(texts),
            "leakage_rate": leakage_rate(texts),
            "length_ratio": length_ratio(sources, texts),
        }

    def language_table(texts: list[str]) -> dict[str, dict[str, float]]:
        table: dict[str, dict[str, float]] = {}
        for language in LANGUAGES:
            rows = [i for i, text in enumerate(inputs) if language_of(text) == language]
            if rows:
                table[language] = style_and_content(
                    [texts[i] for i in rows], [inputs[i] for i in rows]
                )
        return table

    # Scored once per (adapter, strength); the headline row, the monotonicity curve and
    # the per-strength table all read from here.
    scores = {key: style_and_content(texts, inputs) for key, texts in outputs.items()}
    variants: dict[str, VariantMetrics] = {}
    for variant, texts in headline.items():
        latency: tuple[float | None, float | None] = (None, None)
        if variant == CANDIDATE:
            stage("timing single transforms")
            latency = _latencies(engine, CANDIDATE, plan)
        elif variant == QUANTIZED and quantized_engine is not None:
            latency = _latencies(quantized_engine, CANDIDATE, plan)
        basic = scores.get((variant, plan.strength)) or style_and_content(texts, inputs)
        variants[variant] = VariantMetrics(
            **basic,
            distinct_1=distinct_n(texts, 1),
            distinct_2=distinct_n(texts, 2),
            perplexity=perplexity(engine, texts) if any(texts) else None,
            latency_p50_ms=latency[0],
            latency_p95_ms=latency[1],
        )
    curve = {a: {s: scores[(a, s)]["style_probability"] for s in plan.strengths} for a in adapters}
    by_strength = {
        adapter: {
            s: {k: scores[(adapter, s)][k] for k in ("style_accuracy", "content_preservation")}
            for s in plan.strengths
        }
        for adapter in adapters
    }
    samples = [
        {"input": text, **{variant: texts[i] for variant, texts in headline.items()}}
        for i, text in enumerate(inputs[:12])
    ]
    return CandidateEvaluation(
        persona=persona.id,
        strength=plan.strength,
        inputs=len(inputs),
        variants=variants,
        strength_curve=curve,
        by_strength=by_strength,
        by_language={variant: language_table(texts) for variant, texts in headline.items()},
        samples=samples,
    )
