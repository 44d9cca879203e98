"""Request and response bodies of the HTTP API.

Validation lives here, so every bad input is a 422 whose message names the field.
The OpenAI-compatible bodies are in :mod:`kizuna.serve.openai_schemas`.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_NEW_TOKENS = 512


class FieldError(ValueError):
    """A request field the schema accepted but the service cannot serve as asked."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class StrictBody(BaseModel):
    """A request body: unknown fields and non-finite numbers (``1e999``) are refused."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Sampling(StrictBody):
    """Decoding settings shared by both endpoints."""

    max_new_tokens: int = Field(default=64, ge=1, le=MAX_NEW_TOKENS)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)


class TransformRequest(Sampling):
    """Rewrite ``text`` in one persona's voice, or a weighted mix of several."""

    text: str = Field(min_length=1)
    persona: str | None = Field(default=None, description="persona or persona@version")
    mix: dict[str, float] | None = Field(
        default=None, description='keys: persona or persona@version, e.g. {"tsundere": 0.7}'
    )
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


class FeedbackRequest(StrictBody):
    """A thumbs up or down on an interaction."""

    interaction_id: str = Field(min_length=1, max_length=128)
    thumbs_up: bool
