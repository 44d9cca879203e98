"""The shipped neutral corpus and the parallel corpus the rules teacher builds from it.

See ``data/README.md`` for where the sentences come from and their licences.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from kizuna.datasets.pairs import StyledPair
from kizuna.personas.schema import INTENSITY_STRENGTH, Language, PersonaProfile
from kizuna.teacher.base import StyleRequest, Teacher

DATA_DIR = Path(__file__).parent / "data"

#: One pair per intensity level of the profiles: subtle, standard, exaggerated.
CORPUS_STRENGTHS: tuple[float, ...] = tuple(sorted(INTENSITY_STRENGTH.values()))


def neutral_sentences(language: Language | None = None) -> list[str]:
    """The shipped neutral sentences of one language (English first when both)."""
    languages: list[Language] = [language] if language else ["en", "zh"]
    return [
        line
        for lang in languages
        for line in (DATA_DIR / f"neutral.{lang}.txt").read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]


def parallel_pairs(
    sentences: Sequence[str],
    profiles: Mapping[str, PersonaProfile],
    teacher: Teacher,
    *,
    strengths: Iterable[float] = CORPUS_STRENGTHS,
    batch_size: int = 256,
    on_progress: Callable[[int, int], None] | None = None,
) -> list[StyledPair]:
    """Every sentence rewritten as every persona at every strength by ``teacher``.

    ``on_progress`` is called with (pairs written so far, pairs in all).
    """
    requests = [
        StyleRequest(text=sentence, persona=profile, strength=strength)
        for profile in profiles.values()
        for strength in strengths
        for sentence in sentences
    ]
    pairs: list[StyledPair] = []
    for start in range(0, len(requests), batch_size):
        chunk = requests[start : start + batch_size]
        targets = teacher.relabel(chunk)
        pairs.extend(
            StyledPair(
                input=request.text,
                target=target,
                persona=request.persona.id,
                strength=request.strength,
                extra={"teacher": teacher.name},
            )
            for request, target in zip(chunk, targets, strict=True)
        )
        if on_progress is not None:
            on_progress(len(pairs), len(requests))
    return pairs
