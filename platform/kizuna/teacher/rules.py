"""The ``rules`` teacher: deterministic rewrites built only from the persona profiles.

A rewrite wraps the neutral answer, left word for word, in the profile's marker-bearing
phrases (``rules`` in the profile), more of them the stronger the request:

- subtle: one opener before the answer;
- standard: an opener and a closer;
- exaggerated: an opener and two closers.

Which phrases are used is chosen by a hash of the persona and the input, so the same
request always gets the same target and a corpus uses every phrase. It needs no model
and is the baseline every other teacher is compared with.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

from kizuna.config import Settings
from kizuna.teacher.base import StyleRequest

_TERMINAL = {"en": ".!?", "zh": "。！？…"}


def _pick(options: Sequence[str], key: str, salt: int) -> str:
    return options[zlib.crc32(f"{salt}|{key}".encode()) % len(options)]


def _as_sentence(text: str, terminal: str, full_stop: str) -> str:
    text = text.strip()
    return text if text and text[-1] in terminal else text + full_stop


def rewrite(request: StyleRequest) -> str:
    """The rules rewrite of one request."""
    if request.strength == 0.0:
        return request.text.strip()  # strength 0 is the base behaviour: no personality
    language = request.language
    phrases = getattr(request.persona.rules, language)
    key = f"{request.persona.id}|{request.text}"
    answer = _as_sentence(request.text, _TERMINAL[language], "。" if language == "zh" else ".")
    opener = _pick(phrases.openers, key, 0)
    closers: list[str] = []
    if request.intensity != "subtle":
        closers.append(_pick(phrases.closers, key, 1))
    if request.intensity == "exaggerated":
        rest = [c for c in phrases.closers if c not in closers]
        closers.append(_pick(rest, key, 2))
    separator = "" if language == "zh" else " "
    return separator.join([opener, answer, *closers])


class RulesTeacher:
    """Deterministic, profile-driven rewrites (see the module docstring)."""

    name = "rules"

    @property
    def version(self) -> str:
        """Bumped when the rewrite logic changes; the phrases are versioned with the profiles."""
        return "rules-1"

    def relabel(self, requests: Sequence[StyleRequest]) -> list[str]:
        """One rewrite per request."""
        return [rewrite(request) for request in requests]


def build(_settings: Settings) -> RulesTeacher:
    """The rules teacher needs no settings: everything comes from the profiles."""
    return RulesTeacher()
