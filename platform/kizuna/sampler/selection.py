"""Choosing a labelling batch: uncertainty first, spread out, within budgets.

Each persona's candidates are ranked by maximal marginal relevance:
``λ · score − (1 − λ) · max similarity to what is already picked``, with scores scaled to
[0, 1] per persona. λ = 1 is plain top-k by uncertainty; lower λ trades a little
uncertainty for coverage, so near-duplicates do not eat the budget. Every pick records
its score, rank and the similarity that was paid for it, for the dashboard.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from kizuna.sampler.diversity import cosine, ngram_vector

Score = Literal["mean_entropy", "max_entropy", "margin"]
SCORES: tuple[Score, ...] = ("mean_entropy", "max_entropy", "margin")


@dataclass(frozen=True)
class Candidate:
    """An interaction that may be labelled."""

    interaction_id: int
    persona: str
    text: str
    entropy_mean: float
    entropy_max: float
    consent: bool
    strength: float
    margin_mean: float | None = None  # None: recorded before margins were


@dataclass(frozen=True)
class Pick:
    """A chosen interaction and why it was chosen."""

    interaction_id: int
    persona: str
    score: float
    rank: int
    max_similarity: float
    reason: str


@dataclass(frozen=True)
class SamplerConfig:
    """Budgets and the trade-off between uncertainty and diversity."""

    per_persona_budget: int = 50
    global_budget: int = 200
    score: Score = "mean_entropy"
    diversity: float = 0.5  # 1 - λ: 0 is plain top-k

    def __post_init__(self) -> None:
        if self.per_persona_budget < 0 or self.global_budget < 0:
            raise ValueError("budgets must be >= 0")
        if not 0.0 <= self.diversity <= 1.0:
            raise ValueError("diversity must be in [0, 1]")
        if self.score not in SCORES:
            raise ValueError(f"score must be one of {', '.join(SCORES)}, got {self.score!r}")


def _score(candidate: Candidate, kind: Score) -> float:
    if kind == "margin":
        # A small top-1/top-2 gap is high uncertainty; 1 - margin ranks it like entropy.
        return 1.0 - (candidate.margin_mean if candidate.margin_mean is not None else 1.0)
    return candidate.entropy_mean if kind == "mean_entropy" else candidate.entropy_max


def _mmr(candidates: list[Candidate], config: SamplerConfig) -> list[Pick]:
    scores = [_score(c, config.score) for c in candidates]
    low, high = min(scores, default=0.0), max(scores, default=0.0)
    scaled = [(s - low) / (high - low) if high > low else 1.0 for s in scores]
    vectors = [ngram_vector(c.text) for c in candidates]
    nearest = [0.0] * len(candidates)  # max similarity to anything picked so far
    remaining = set(range(len(candidates)))
    picks: list[Pick] = []
    weight = config.diversity
    while remaining and len(picks) < config.per_persona_budget:
        best = max(remaining, key=lambda i: ((1 - weight) * scaled[i] - weight * nearest[i], -i))
        remaining.discard(best)
        chosen = candidates[best]
        picks.append(
            Pick(
                interaction_id=chosen.interaction_id,
                persona=chosen.persona,
                score=scores[best],
                rank=len(picks) + 1,
                max_similarity=round(nearest[best], 4),
                reason=f"{config.score} {scores[best]:.3f}, similarity to earlier picks "
                f"{nearest[best]:.2f}",
            )
        )
        for i in remaining:
            nearest[i] = max(nearest[i], cosine(vectors[i], vectors[best]))
    return picks


def select(candidates: Sequence[Candidate], config: SamplerConfig) -> list[Pick]:
    """The labelling batch: consented only, per-persona then global budget, best first."""
    by_persona: dict[str, list[Candidate]] = {}
    for candidate in candidates:
        if config.score == "margin" and candidate.margin_mean is None:
            continue  # no margin was recorded: it cannot be ranked by one
        if candidate.consent:
            by_persona.setdefault(candidate.persona, []).append(candidate)
    picks = [pick for group in by_persona.values() for pick in _mmr(group, config)]
    # Over the global budget, keep each persona's best ranks first, then higher scores.
    picks.sort(key=lambda p: (p.rank, -p.score))
    return picks[: config.global_budget]
