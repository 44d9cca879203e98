"""Request and response bodies of the HTTP API.

Validation lives here, so every bad input is a 422 whose message names the field.
The chat endpoint follows OpenAI's chat-completions shape so existing clients work.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_NEW_TOKENS = 512


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Sampling(_Body):
    """Decoding settings shared by both endpoints."""

    max_new_tokens: int = Field(default=64, ge=1, le=MAX_NEW_TOKENS)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)


class TransformRequest(Sampling):
    """Rewrite ``text`` in one persona's voice, or a weighted mix of several."""

    text: str = Field(min_length=1)
    persona: str | None = Field(default=None, description="persona or persona@version")
    mix: dict[str, float] | None = Field(default=None, description='e.g. {"tsundere": 0.7}')
    strength: float = Field(default=1.0, ge=0.0, le=1.0)
    consent: bool = Field(default=False, description="may this interaction train adapters")

    @field_validator("text")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("text is blank")
        return value

    @field_validator("mix")
    @classmethod
    def _valid_weights(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("mix is empty")
        if any(weight < 0 for weight in value.values()):
            raise ValueError("mix weights must be >= 0")
        if sum(value.values()) <= 0:
            raise ValueError("mix weights must not sum to 0")
        return value

    @model_validator(mode="after")
    def _persona_or_mix(self) -> TransformRequest:
        if (self.persona is None) == (self.mix is None):
            raise ValueError("give exactly one of persona or mix")
        return self


class TransformResponse(BaseModel):
    """The rewrite and what was recorded about it."""

    output: str
    persona: str | None
    mix: dict[str, float] | None
    adapter_version: int | None
    adapter_versions: dict[str, int]
    entropy_mean: float
    entropy_max: float
    latency_ms: float
    interaction_id: str
    cached: bool = False


class ChatMessage(BaseModel):
    """One turn of a conversation."""

    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=100_000)


class ChatCompletionRequest(_Body):
    """OpenAI-compatible: ``model`` is a persona, ``persona@version``, or ``base``."""

    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int = Field(default=128, ge=1, le=MAX_NEW_TOKENS)
    temperature: float = Field(default=0.7, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    stream: bool = False
    strength: float = Field(default=1.0, ge=0.0, le=1.0, description="Kizuna extension")
    consent: bool = Field(default=False, description="Kizuna extension")
    user: str | None = None


class FeedbackRequest(_Body):
    """A thumbs up or down on an interaction."""

    interaction_id: str = Field(min_length=1, max_length=128)
    thumbs_up: bool
