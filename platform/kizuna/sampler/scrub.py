"""Scrubbing personal data from text before it leaves for a teacher.

Patterns are deliberately broad: a false positive costs one placeholder in a training
input, a false negative leaks someone's phone number to a third-party endpoint.
"""

from __future__ import annotations

import re

_RULES: list[tuple[str, re.Pattern[str]]] = [
    ("[EMAIL]", re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")),
    # Mainland-China resident ID: 17 digits and a digit or X.
    ("[ID]", re.compile(r"(?<!\d)\d{17}[\dXx](?!\d)")),
    # Mainland-China mobile numbers: 1, then 3-9, then 9 digits.
    ("[PHONE]", re.compile(r"(?<!\d)1[3-9]\d{9}(?!\d)")),
    # Card-like numbers: 13-19 digits, optionally grouped by spaces or dashes.
    ("[CARD]", re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")),
    # Phone numbers: an optional +country code, then 7-15 digits with separators.
    ("[PHONE]", re.compile(r"(?<![\w])\+?\d{1,3}?[ .-]?\(?\d{2,4}\)?(?:[ .-]?\d{2,4}){2,4}(?!\d)")),
    # Any remaining run of 9+ digits looks like an account or ID number.
    ("[NUMBER]", re.compile(r"(?<!\d)\d{9,}(?!\d)")),
]


def scrub(text: str) -> str:
    """``text`` with emails, phone numbers and ID-like numbers replaced by placeholders."""
    for placeholder, pattern in _RULES:
        text = pattern.sub(placeholder, text)
    return text
