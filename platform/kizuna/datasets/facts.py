"""The facts a rewrite must keep: numbers, names and negations.

A persona may change every word of a sentence but these: a rewrite that says 16 where
the input said 15, drops "Maria", or turns "can't come" into "can come" has changed what
was said, however similar it reads. Style words (particles, interjections, a
tsundere's added "it's not like…") are not facts, so adding them is never a loss.

- numbers: every digit sequence (``7:30``, ``5000``, ``2,000`` read as ``2000``) of the
  input, and no new ones (saying one twice, for emphasis, is fine);
- names: English capitalised words past the start of a sentence (not "I"), and
  Chinese person names from jieba's part-of-speech tags (``nr``), plus Latin names in
  Chinese text;
- negations: the rewrite has at least as many negations as the input (a persona may
  add a denial; it may not drop one), and in English no auxiliary the input states
  plainly is negated before the same word in the rewrite ("was equal" → "wasn't
  equal"): that flips the statement rather than adding a denial beside it.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from functools import cache

import jieba
import jieba.posseg

from kizuna.teacher.base import language_of

_NUMBER = re.compile(r"\d+(?:[.:,]\d+)*")
_SENTENCE_START = re.compile(r"(?:^|[.!?…]\s+|[\"“(]\s*)$")
_CAPITALISED = re.compile(r"\b[A-Z][a-zA-Z'-]+")
_NEGATION_EN = re.compile(
    r"\b(?:not|no|never|none|nobody|nothing|nowhere|neither|nor|cannot)\b|n't\b", re.IGNORECASE
)
_NEGATION_ZH = re.compile(r"[不没别未无非勿甭]")
_AUXILIARIES = (
    "is|are|was|were|am|do|does|did|have|has|had|can|could|will|would|should|must|may|might"
)
# An auxiliary with the word after it ("was equal"), plain or negated ("wasn't equal").
_PLAIN_AUXILIARY = re.compile(rf"\b({_AUXILIARIES})\s+(?!not\b)(\w+)", re.IGNORECASE)
_NEGATED_AUXILIARY = re.compile(rf"\b({_AUXILIARIES})(?:n't|\s+not)\s+(\w+)", re.IGNORECASE)
# Capitalised words that are not names wherever they stand.
_NOT_NAMES = frozenset({"I", "I'm", "I'll", "I've", "I'd", "OK", "Okay"})


@dataclass(frozen=True)
class Facts:
    """What a text states that a rewrite must keep."""

    numbers: frozenset[str]
    names: frozenset[str]
    negations: int


def _numbers(text: str) -> frozenset[str]:
    return frozenset(match.replace(",", "") for match in _NUMBER.findall(text))


@cache
def _jieba() -> None:
    # jieba logs its dictionary load at INFO on first use; it is not a warning.
    jieba.setLogLevel(logging.WARNING)
    jieba.initialize()


def _names_zh(text: str) -> set[str]:
    _jieba()
    names = {w for w, flag in jieba.posseg.cut(text) if flag.startswith("nr") and len(w) >= 2}
    return names | set(_CAPITALISED.findall(text))


def _names_en(text: str) -> set[str]:
    return {
        match.group()
        for match in _CAPITALISED.finditer(text)
        if not _SENTENCE_START.search(text[: match.start()]) and match.group() not in _NOT_NAMES
    }


def _negations(text: str, language: str) -> int:
    return len((_NEGATION_ZH if language == "zh" else _NEGATION_EN).findall(text))


def facts_of(text: str) -> Facts:
    """The numbers, names and negation count of ``text``."""
    language = language_of(text)
    return Facts(
        numbers=_numbers(text),
        names=frozenset(_names_zh(text) if language == "zh" else _names_en(text)),
        negations=_negations(text, language),
    )


def lost_facts(source: str, rewrite: str) -> list[str]:
    """What ``rewrite`` changed of ``source``'s facts (empty: every fact kept)."""
    before, after = facts_of(source), _numbers(rewrite)
    problems = [f"number {n} missing" for n in sorted(before.numbers - after)]
    problems += [f"number {n} added" for n in sorted(after - before.numbers)]
    problems += [f"name {name} missing" for name in sorted(before.names) if name not in rewrite]
    language = language_of(source)
    negations = _negations(rewrite, language)
    if negations < before.negations:
        problems.append(f"negation dropped ({before.negations} → {negations})")
    if language == "en":
        problems += [f"negation added to '{a} {w}'" for a, w in _flipped(source, rewrite)]
    return problems


def _pairs(pattern: re.Pattern[str], text: str) -> set[tuple[str, str]]:
    return {(aux.lower(), word.lower()) for aux, word in pattern.findall(text)}


def _flipped(source: str, rewrite: str) -> list[tuple[str, str]]:
    """Auxiliaries the input states plainly that the rewrite negates, same next word."""
    plain = _pairs(_PLAIN_AUXILIARY, source) - _pairs(_NEGATED_AUXILIARY, source)
    return sorted(_pairs(_NEGATED_AUXILIARY, rewrite) & plain)
