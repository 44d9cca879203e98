"""Styled pairs: the unit of training data, its split and its JSONL form.

The JSONL form is the seed format every trainer reads:
``{"input", "target", "metadata": {"personality", "strength", ...}}``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kizuna.store.datasets import RowRecord

#: Share of inputs held out for testing, decided by a hash of the input alone, so every
#: persona and strength of one input lands on the same side and no test input leaks.
#: 20 %: about 48 held-out inputs per language of the authored corpus's 240.
TEST_PERCENT = 20


@dataclass(frozen=True)
class StyledPair:
    """A neutral input and its rewrite as one persona at one strength."""

    input: str
    target: str
    persona: str
    strength: float
    source_interaction_id: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def split(self) -> str:
        """``train`` or ``test``, fixed by the input (see ``TEST_PERCENT``)."""
        return split_of(self.input)

    def metadata(self) -> dict[str, Any]:
        """The seed format's metadata object."""
        return {"personality": self.persona, "strength": self.strength, **self.extra}

    def row_record(self) -> RowRecord:
        """The pair as a row of a stored dataset version."""
        return RowRecord(
            input=self.input,
            target=self.target,
            metadata=self.metadata(),
            split=self.split,
            source_interaction_id=self.source_interaction_id,
        )

    def to_json(self) -> dict[str, Any]:
        """One JSONL row in the seed format."""
        return seed_row(self.input, self.target, self.metadata(), self.split)


def seed_row(source: str, target: str, metadata: dict[str, Any], split: str) -> dict[str, Any]:
    """A row of the seed JSONL format; the split rides in the metadata."""
    return {"input": source, "target": target, "metadata": {**metadata, "split": split}}


def split_of(text: str) -> str:
    """The deterministic 80/20 split of an input."""
    bucket = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") % 100
    return "test" if bucket < TEST_PERCENT else "train"


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write rows as JSONL atomically (a reader never sees half a file); returns the count."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    count = 0
    with partial.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
        handle.flush()
        os.fsync(handle.fileno())
    partial.replace(path)
    return count
