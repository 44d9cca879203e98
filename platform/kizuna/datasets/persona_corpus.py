"""The authored persona corpus: neutral inputs and their hand-written persona rewrites.

``data/persona_corpus/`` holds, per language, 240 neutral inputs (questions,
instructions, facts, feelings, plans, small talk) and, per persona, one rewrite of every
input at one of the three intensities. It is the knowledge every learned part starts
from: bootstrap trains the first adapters on its train split, the persona judge learns
the personas from it, the embedded teacher takes its few-shot examples from it, and the
evaluation reads its test split. The split is by a hash of the input, so an input and
all its rewrites are on one side. See ``data/persona_corpus/README.md`` for provenance.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from kizuna.datasets.pairs import split_of
from kizuna.personas.schema import INTENSITY_STRENGTH, Intensity, Language
from kizuna.store import datasets as dataset_store
from kizuna.store.datasets import RowRecord

CORPUS_DIR = Path(__file__).parent / "data" / "persona_corpus"
LANGUAGES: tuple[Language, ...] = ("en", "zh")
InputKind = Literal["question", "instruction", "fact", "feeling", "plan", "smalltalk"]


class _Row(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AuthoredInput(_Row):
    """A neutral input sentence and what kind of utterance it is."""

    kind: InputKind
    text: str = Field(min_length=1)


class _RewriteRow(_Row):
    lang: Language
    intensity: Intensity
    input: str = Field(min_length=1)
    target: str = Field(min_length=1)


@dataclass(frozen=True)
class AuthoredRewrite:
    """One persona's hand-written rewrite of one neutral input at one intensity."""

    persona: str
    language: Language
    intensity: Intensity
    input: str
    target: str

    @property
    def strength(self) -> float:
        """The strength the intensity stands for (subtle 0.3, standard 0.6, exaggerated 1)."""
        return INTENSITY_STRENGTH[self.intensity]

    @property
    def split(self) -> str:
        """``train`` or ``test``, by the input (see :func:`kizuna.datasets.pairs.split_of`)."""
        return split_of(self.input)


class CorpusError(ValueError):
    """A corpus file is malformed or disagrees with the inputs it rewrites."""


def _lines(path: Path) -> list[tuple[int, dict[str, object]]]:
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                rows.append((number, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise CorpusError(f"{path.name}:{number}: not JSON ({exc.msg})") from exc
    return rows


@cache
def authored_inputs(language: Language) -> tuple[AuthoredInput, ...]:
    """The neutral inputs of one language, in file order."""
    path = CORPUS_DIR / f"inputs.{language}.jsonl"
    return tuple(AuthoredInput.model_validate(row) for _, row in _lines(path))


def corpus_personas() -> list[str]:
    """The personas the corpus has rewrites for."""
    return sorted(p.stem for p in CORPUS_DIR.glob("*.jsonl") if not p.stem.startswith("inputs"))


@cache
def _persona_rewrites(persona: str) -> tuple[AuthoredRewrite, ...]:
    path = CORPUS_DIR / f"{persona}.jsonl"
    if not path.is_file():
        return ()  # a persona added by a user profile, with no authored rewrites
    known = {lang: {row.text for row in authored_inputs(lang)} for lang in LANGUAGES}
    rewrites = []
    for number, raw in _lines(path):
        row = _RewriteRow.model_validate(raw)
        if row.input not in known[row.lang]:
            raise CorpusError(f"{path.name}:{number}: input is not in inputs.{row.lang}.jsonl")
        rewrites.append(
            AuthoredRewrite(persona, row.lang, row.intensity, row.input, row.target.strip())
        )
    return tuple(rewrites)


def authored_rewrites(
    personas: Iterable[str] | None = None,
    *,
    split: str | None = None,
    language: Language | None = None,
) -> list[AuthoredRewrite]:
    """Rewrites of the given personas (all by default), of one split and language or all."""
    return [
        rewrite
        for persona in (corpus_personas() if personas is None else personas)
        for rewrite in _persona_rewrites(persona)
        if (split is None or rewrite.split == split)
        and (language is None or rewrite.language == language)
    ]


def heldout_texts(language: Language) -> list[str]:
    """The test-split inputs of one language, in file order: never trained on."""
    return [row.text for row in authored_inputs(language) if split_of(row.text) == "test"]


#: The dataset that holds the authored corpus, so retrains can replay it beside new data.
AUTHORED_DATASET = "authored"


def store_authored_corpus(session: Session) -> None:
    """The authored corpus as a version of :data:`AUTHORED_DATASET`, when it changed."""
    rewrites = authored_rewrites()
    digest = hashlib.sha256(
        "\n".join(f"{r.persona}\t{r.input}\t{r.target}\t{r.intensity}" for r in rewrites).encode()
    ).hexdigest()
    try:
        if (
            dataset_store.get_dataset(session, name=AUTHORED_DATASET).provenance.get("sha256")
            == digest
        ):
            return
    except LookupError:
        pass
    dataset_store.create_dataset_version(
        session,
        name=AUTHORED_DATASET,
        rows=[
            RowRecord(
                input=r.input,
                target=r.target,
                metadata={"personality": r.persona, "strength": r.strength},
                split=r.split,
            )
            for r in rewrites
        ],
        provenance={"source": "kizuna.datasets.persona_corpus", "sha256": digest},
    )
