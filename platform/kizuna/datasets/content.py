"""Did a rewrite keep what its input said? A verdict per (input, rewrite) pair.

Two checks, both needed: the rewrite keeps every fact (:mod:`kizuna.datasets.facts`:
numbers, names, negations), and it stays close enough in meaning
(:class:`~kizuna.datasets.similarity.ContentSimilarity`: MiniLM cosine for English,
chrF for Chinese) that it is still about the same thing. The similarity floors are set
from the authored corpus, whose rewrites keep the meaning by construction, so a
persona's own style words do not fail a rewrite: each floor is the 5th percentile of
the authored rewrites' similarity to their inputs (``benchmarks/persona_quality.py``
prints the calibration: en 0.55, zh 0.30), while a rewrite of a *different* input
scores below it nearly always.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kizuna.datasets.facts import lost_facts
from kizuna.datasets.similarity import ContentSimilarity
from kizuna.teacher.base import language_of

#: Similarity floors by language (see the module docstring for how they were set).
MIN_SIMILARITY = {"en": 0.55, "zh": 0.30}


@dataclass(frozen=True)
class ContentVerdict:
    """One rewrite's similarity to its input, the facts it lost, and whether it passes."""

    similarity: float
    lost: list[str]

    @property
    def kept(self) -> bool:
        """Every fact kept and similar enough (a low similarity is listed in ``lost``)."""
        return not self.lost


class ContentCheck:
    """Facts kept and meaning close, per pair (see the module docstring)."""

    def __init__(self, similarity: ContentSimilarity | None = None) -> None:
        self.similarity = similarity or ContentSimilarity()

    def verdicts(self, pairs: Sequence[tuple[str, str]]) -> list[ContentVerdict]:
        """One verdict per (input, rewrite) pair."""
        scores = self.similarity.scores(pairs)
        verdicts = []
        for (source, rewrite), score in zip(pairs, scores, strict=True):
            lost = lost_facts(source, rewrite)
            floor = MIN_SIMILARITY[language_of(source)]
            if score < floor:
                lost.append(f"similarity {score:.2f} < {floor:.2f}")
            verdicts.append(ContentVerdict(similarity=score, lost=lost))
        return verdicts
