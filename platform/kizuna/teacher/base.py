"""The one protocol every teacher follows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from kizuna.personas.schema import INTENSITY_STRENGTH, Intensity, Language, PersonaProfile

if TYPE_CHECKING:
    import torch


class TeacherUnavailableError(RuntimeError):
    """The teacher cannot answer at all (endpoint down, model missing); nothing was labelled."""


@dataclass(frozen=True)
class StyleRequest:
    """Rewrite ``text`` as ``persona`` at ``strength`` (0: unchanged, 1: full personality)."""

    text: str
    persona: PersonaProfile
    strength: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.strength <= 1.0:
            raise ValueError(f"strength must be in [0, 1], got {self.strength}")

    @property
    def language(self) -> Language:
        """The language of the input (any CJK ideograph makes it Chinese)."""
        return language_of(self.text)

    @property
    def intensity(self) -> Intensity:
        """The profile's intensity level nearest to the requested strength."""
        return nearest_intensity(self.strength)


@runtime_checkable
class Teacher(Protocol):
    """Turns neutral inputs into stylised targets."""

    #: The registry name, recorded in every dataset's provenance.
    name: str

    @property
    def version(self) -> str:
        """What identifies this teacher's behaviour (model, settings) for provenance."""
        ...

    def relabel(self, requests: Sequence[StyleRequest]) -> list[str]:
        """One target per request, in order."""
        ...


@runtime_checkable
class LogitTeacher(Teacher, Protocol):
    """A teacher that can also give its distribution over the student's vocabulary."""

    def target_logits(self, request: StyleRequest, target: str) -> torch.Tensor:
        """Teacher-forced logits ``(reply tokens, vocab)`` for ``target`` as the reply.

        Row i predicts reply token i, where the reply is tokenised exactly as the student
        is trained on it (:func:`kizuna.model.prompts.reply_ids`), so a KL term can
        compare the two distributions position by position.
        """
        ...


def language_of(text: str) -> Language:
    """``zh`` when the text contains a CJK ideograph, else ``en``."""
    return "zh" if any("\u4e00" <= char <= "\u9fff" for char in text) else "en"


def nearest_intensity(strength: float) -> Intensity:
    """The intensity level whose nominal strength is closest to ``strength``."""
    return min(INTENSITY_STRENGTH, key=lambda level: abs(INTENSITY_STRENGTH[level] - strength))
