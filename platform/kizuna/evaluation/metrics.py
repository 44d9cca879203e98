"""Metrics of an adapter's outputs on held-out inputs.

Hugging Face ``evaluate`` loads its metric scripts from the Hub, which an offline
install cannot reach; the metrics here use the libraries those scripts wrap (sacrebleu
for chrF, sentence-transformers for embeddings) or are a few lines of counting.
"""

from __future__ import annotations

from collections.abc import Sequence

from kizuna.datasets.similarity import ContentSimilarity
from kizuna.evaluation.classifier import PersonaClassifier
from kizuna.teacher.base import language_of


def style_accuracy(classifier: PersonaClassifier, outputs: Sequence[str], persona: str) -> float:
    """Share of outputs the classifier attributes to ``persona``."""
    if not outputs:
        return 0.0
    return sum(label == persona for label in classifier.predict(outputs)) / len(outputs)


def content_preservation(
    similarity: ContentSimilarity, inputs: Sequence[str], outputs: Sequence[str]
) -> float:
    """Mean input/output content similarity (MiniLM cosine for English, chrF for Chinese)."""
    if not inputs:
        return 0.0
    scores = similarity.scores(list(zip(inputs, outputs, strict=True)))
    return sum(scores) / len(scores)


def _units(text: str) -> list[str]:
    # Words for English, characters for Chinese (it has no spaces to split on).
    return [c for c in text if not c.isspace()] if language_of(text) == "zh" else text.split()


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct n-grams ÷ all n-grams over ``texts`` (higher: less repetitive)."""
    grams = [
        tuple(units[i : i + n])
        for units in map(_units, texts)
        for i in range(max(len(units) - n + 1, 0))
    ]
    return len(set(grams)) / len(grams) if grams else 0.0
