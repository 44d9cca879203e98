"""Quality filters for styled pairs, each drop counted under its reason.

A pair is checked in this order and dropped at the first failure, so every dropped pair
has exactly one reason:

- ``empty``: no input or no target;
- ``too_long``: input or target longer than ``max_chars``;
- ``duplicate``: the same input, persona and strength as an earlier pair;
- ``near_duplicate``: an input almost the same as an earlier, different input (hashed
  character n-gram cosine ≥ ``near_duplicate``), e.g. one number or name changed;
- ``no_marker``: a target that contains none of the persona's markers;
- ``length_ratio``: target length ÷ input length outside ``length_ratio``;
- ``content_lost``: a target whose content similarity to its input is below the
  language's threshold (see :mod:`kizuna.datasets.similarity`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kizuna.datasets.pairs import StyledPair
from kizuna.datasets.similarity import ContentSimilarity
from kizuna.personas.schema import PersonaProfile
from kizuna.sampler.diversity import near_duplicates
from kizuna.teacher.base import language_of

REASONS = (
    "empty",
    "too_long",
    "duplicate",
    "near_duplicate",
    "no_marker",
    "length_ratio",
    "content_lost",
)


@dataclass(frozen=True)
class QualityConfig:
    """Thresholds of the filters."""

    max_chars: int = 400
    #: Off only where targets cannot be expected to carry markers (tests of plumbing).
    require_marker: bool = True
    near_duplicate: float = 0.9
    length_ratio: tuple[float, float] = (0.8, 5.0)
    min_similarity_en: float = 0.45  # MiniLM cosine
    min_similarity_zh: float = 0.35  # chrF / 100


@dataclass
class QualityReport:
    """How many pairs came in, how many were kept, and why the rest were dropped."""

    total: int = 0
    kept: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[dict[str, str]]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The report as stored in a dataset's provenance and printed by the CLI."""
        return {
            "total": self.total,
            "kept": self.kept,
            "dropped": {reason: self.dropped[reason] for reason in REASONS},
            "examples": self.examples,
        }


def _has_marker(target: str, profile: PersonaProfile) -> bool:
    folded = target.lower()
    markers = [*profile.markers.zh, *profile.markers.en]
    return any(marker.lower().strip(".") in folded for marker in markers)


def _cheap_reason(
    pair: StyledPair,
    profile: PersonaProfile,
    config: QualityConfig,
    seen: set[tuple[str, str, float]],
    near: set[str],
) -> str | None:
    source, target = pair.input.strip(), pair.target.strip()
    if not source or not target:
        return "empty"
    if max(len(source), len(target)) > config.max_chars:
        return "too_long"
    key = (source, pair.persona, pair.strength)
    if key in seen:
        return "duplicate"
    seen.add(key)
    if source in near:
        return "near_duplicate"
    if config.require_marker and not _has_marker(target, profile):
        return "no_marker"
    low, high = config.length_ratio
    if not low <= len(target) / len(source) <= high:
        return "length_ratio"
    return None


def filter_pairs(
    pairs: Sequence[StyledPair],
    profiles: Mapping[str, PersonaProfile],
    *,
    similarity: ContentSimilarity,
    config: QualityConfig | None = None,
) -> tuple[list[int], dict[int, str], QualityReport]:
    """Indices of the kept pairs, drop reason by index, and the report."""
    config = config or QualityConfig()
    distinct = list(dict.fromkeys(pair.input.strip() for pair in pairs))
    near = {distinct[i] for i in near_duplicates(distinct, threshold=config.near_duplicate)}
    seen: set[tuple[str, str, float]] = set()
    reasons: dict[int, str] = {}
    for index, pair in enumerate(pairs):
        reason = _cheap_reason(pair, profiles[pair.persona], config, seen, near)
        if reason is not None:
            reasons[index] = reason
    survivors = [i for i in range(len(pairs)) if i not in reasons]
    scores = similarity.scores([(pairs[i].input, pairs[i].target) for i in survivors])
    for index, score in zip(survivors, scores, strict=True):
        language = language_of(pairs[index].input)
        floor = config.min_similarity_zh if language == "zh" else config.min_similarity_en
        if score < floor:
            reasons[index] = "content_lost"
    report = QualityReport(total=len(pairs), dropped=Counter(reasons.values()))
    for index, reason in sorted(reasons.items()):
        shown = report.examples.setdefault(reason, [])
        if len(shown) < 3:
            shown.append({"input": pairs[index].input, "target": pairs[index].target})
    kept = [i for i in range(len(pairs)) if i not in reasons]
    report.kept = len(kept)
    return kept, reasons, report
