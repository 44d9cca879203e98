"""Metrics of an adapter's outputs on held-out inputs.

Hugging Face ``evaluate`` loads its metric scripts from the Hub, which an offline
install cannot reach; the metrics here use the libraries those scripts wrap (sacrebleu
for chrF, sentence-transformers for embeddings) or are a few lines of counting: loops
(a 4-gram three times or more), prompt leakage, length ratio and distinct-n.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from kizuna.datasets.content import ContentCheck
from kizuna.evaluation.classifier import PersonaClassifier
from kizuna.model.prompts import SYSTEM_PROMPT, TRANSFORM_INSTRUCTION
from kizuna.teacher.base import language_of

#: An output loops when one of its 4-grams occurs this often.
LOOP_REPEATS = 3
_LEAK_MARKERS = (TRANSFORM_INSTRUCTION.rstrip(":").lower(), SYSTEM_PROMPT.rstrip(".").lower())


def style_accuracy(classifier: PersonaClassifier, outputs: Sequence[str], persona: str) -> float:
    """Share of outputs the classifier attributes to ``persona``."""
    if not outputs:
        return 0.0
    return sum(label == persona for label in classifier.predict(outputs)) / len(outputs)


def content_preservation(
    check: ContentCheck, inputs: Sequence[str], outputs: Sequence[str]
) -> float:
    """Share of outputs that keep their input's facts and meaning (see ``ContentCheck``)."""
    if not inputs:
        return 0.0
    verdicts = check.verdicts(list(zip(inputs, outputs, strict=True)))
    return sum(v.kept for v in verdicts) / len(verdicts)


def _units(text: str) -> list[str]:
    # Words for English, characters for Chinese (it has no spaces to split on).
    return [c for c in text if not c.isspace()] if language_of(text) == "zh" else text.split()


def loops(text: str, n: int = 4) -> bool:
    """Whether one n-gram of ``text`` occurs :data:`LOOP_REPEATS` times or more."""
    units = _units(text)
    counts = Counter(tuple(units[i : i + n]) for i in range(max(len(units) - n + 1, 0)))
    return max(counts.values(), default=0) >= LOOP_REPEATS


def loop_rate(outputs: Sequence[str]) -> float:
    """Share of outputs that loop (see :func:`loops`)."""
    return sum(map(loops, outputs)) / len(outputs) if outputs else 0.0


def leaks_instruction(text: str) -> bool:
    """Whether ``text`` echoes the prompt's instruction or system prompt."""
    folded = text.lower()
    return any(marker in folded for marker in _LEAK_MARKERS)


def leakage_rate(outputs: Sequence[str]) -> float:
    """Share of outputs that echo the prompt (see :func:`leaks_instruction`)."""
    return sum(map(leaks_instruction, outputs)) / len(outputs) if outputs else 0.0


def length_ratio(inputs: Sequence[str], outputs: Sequence[str]) -> float:
    """Mean output length ÷ input length, in words (en) or characters (zh)."""
    ratios = [
        len(_units(out)) / max(len(_units(src)), 1)
        for src, out in zip(inputs, outputs, strict=True)
    ]
    return sum(ratios) / len(ratios) if ratios else 0.0


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct n-grams ÷ all n-grams over ``texts`` (higher: less repetitive)."""
    grams = [
        tuple(units[i : i + n])
        for units in map(_units, texts)
        for i in range(max(len(units) - n + 1, 0))
    ]
    return len(set(grams)) / len(grams) if grams else 0.0
