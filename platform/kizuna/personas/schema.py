"""The pydantic schema of a personality profile.

A profile is the single description of a personality that every part reads: the rules
teacher builds rewrites from its markers and patterns, bootstrap trains the first adapter
on its examples, the classifier and the dashboard show its names. Every text a person
reads is bilingual (zh + en), so a profile is complete in both languages or invalid.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Language = Literal["zh", "en"]
Intensity = Literal["subtle", "standard", "exaggerated"]

#: The strength in [0, 1] that each intensity level of the profile's guidance stands for.
INTENSITY_STRENGTH: dict[Intensity, float] = {"subtle": 0.3, "standard": 0.6, "exaggerated": 1.0}

MIN_EXAMPLES_PER_LANGUAGE = 10


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Bilingual(_Strict):
    """One text in both languages."""

    zh: str = Field(min_length=1)
    en: str = Field(min_length=1)


class BilingualList(_Strict):
    """A list of short texts (traits, markers) in both languages."""

    zh: list[str] = Field(min_length=1)
    en: list[str] = Field(min_length=1)


class Pattern(_Strict):
    """One transformation the personality applies to a neutral answer."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    description: Bilingual


class Example(_Strict):
    """A neutral input and its rewrite in the personality, at one intensity."""

    input: str = Field(min_length=1)
    target: str = Field(min_length=1)
    intensity: Intensity = "standard"


class Examples(_Strict):
    """Example pairs per language."""

    zh: list[Example] = Field(min_length=MIN_EXAMPLES_PER_LANGUAGE)
    en: list[Example] = Field(min_length=MIN_EXAMPLES_PER_LANGUAGE)


class RewritePhrases(_Strict):
    """Phrases the rules teacher wraps a neutral answer in, in one language.

    Openers go before the answer and end with their own punctuation; closers follow it.
    Every phrase carries at least one of the profile's markers, so a rules rewrite is
    always recognisably in the personality.
    """

    openers: list[str] = Field(min_length=2)
    closers: list[str] = Field(min_length=2)


class RewriteRules(_Strict):
    """The rules teacher's phrases per language."""

    zh: RewritePhrases
    en: RewritePhrases


class PersonaProfile(_Strict):
    """A personality: who it is, how it talks, and examples of it talking."""

    id: str = Field(pattern=r"^[a-z][a-z0-9_-]{1,31}$", description="Short name used in APIs.")
    name: Bilingual
    description: Bilingual
    traits: BilingualList
    markers: BilingualList = Field(description="Phrases that mark the personality's voice.")
    patterns: list[Pattern] = Field(min_length=1)
    intensity: dict[Intensity, Bilingual]
    rules: RewriteRules
    examples: Examples

    @model_validator(mode="after")
    def _all_intensities_described(self) -> PersonaProfile:
        missing = set(INTENSITY_STRENGTH) - set(self.intensity)
        if missing:
            raise ValueError(f"intensity guidance is missing level(s): {sorted(missing)}")
        return self

    @model_validator(mode="after")
    def _rule_phrases_carry_markers(self) -> PersonaProfile:
        for language in ("zh", "en"):
            markers = [m.lower() for m in getattr(self.markers, language)]
            phrases: RewritePhrases = getattr(self.rules, language)
            for phrase in [*phrases.openers, *phrases.closers]:
                if not any(marker in phrase.lower() for marker in markers):
                    raise ValueError(
                        f"rules.{language}: phrase {phrase!r} contains none of the markers"
                    )
        return self

    def example_pairs(self, language: Language | None = None) -> list[Example]:
        """The example pairs, of one language or of both."""
        if language is not None:
            return list(getattr(self.examples, language))
        return [*self.examples.en, *self.examples.zh]
