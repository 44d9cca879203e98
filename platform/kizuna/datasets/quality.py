"""Quality filters for styled pairs, each drop counted under its reason.

A pair is checked in this order and dropped at the first failure, so every dropped pair
has exactly one reason:

- ``empty``: no input or no target;
- ``too_long``: input or target longer than ``max_chars``;
- ``duplicate``: the same input, persona and strength as an earlier pair;
- ``near_duplicate``: an input almost the same as an earlier, different input (hashed
  character n-gram cosine ≥ ``near_duplicate``), e.g. one number or name changed;
- ``no_marker``: a target that contains none of the persona's markers (only where
  ``require_marker`` is set: a persona often speaks without any listed marker);
- ``length_ratio``: target length ÷ input length outside ``length_ratio``;
- ``content_lost``: a target that lost a fact or the meaning of its input (see
  :mod:`kizuna.datasets.content`);
- ``off_style``: a target the persona judge does not find in the persona (probability
  below ``min_style_probability``), when a judge is given.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kizuna.datasets.content import ContentCheck
from kizuna.datasets.pairs import StyledPair
from kizuna.personas.schema import PersonaProfile
from kizuna.sampler.diversity import near_duplicates

if TYPE_CHECKING:
    from kizuna.evaluation.classifier import PersonaClassifier

REASONS = (
    "empty",
    "too_long",
    "duplicate",
    "near_duplicate",
    "no_marker",
    "length_ratio",
    "content_lost",
    "off_style",
)


@dataclass(frozen=True)
class QualityConfig:
    """Thresholds of the filters."""

    max_chars: int = 400
    #: For teachers whose every rewrite must carry a marker by construction (``rules``).
    require_marker: bool = False
    near_duplicate: float = 0.9
    length_ratio: tuple[float, float] = (0.8, 5.0)
    min_style_probability: float = 0.5


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
    content: ContentCheck,
    judge: PersonaClassifier | None = None,
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
    verdicts = content.verdicts([(pairs[i].input, pairs[i].target) for i in survivors])
    for index, verdict in zip(survivors, verdicts, strict=True):
        if not verdict.kept:
            reasons[index] = "content_lost"
    if judge is not None:
        for persona in {pairs[i].persona for i in survivors}:
            judged = [i for i in survivors if i not in reasons and pairs[i].persona == persona]
            if not judged:
                continue
            scores = judge.persona_score([pairs[i].target for i in judged], persona)
            for index, score in zip(judged, scores, strict=True):
                if score < config.min_style_probability:
                    reasons[index] = "off_style"
    report = QualityReport(total=len(pairs), dropped=Counter(reasons.values()))
    for index, reason in sorted(reasons.items()):
        shown = report.examples.setdefault(reason, [])
        if len(shown) < 3:
            shown.append({"input": pairs[index].input, "target": pairs[index].target})
    kept = [i for i in range(len(pairs)) if i not in reasons]
    report.kept = len(kept)
    return kept, reasons, report
