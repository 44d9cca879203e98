"""The OpenAI-compatible request bodies: chat completions and (legacy) completions.

Policy for fields, chosen so a client is never answered something it did not ask for:

- fields Kizuna implements (``stop``, penalties, ``n``, ``logprobs``, …) work as in
  OpenAI's API and vLLM's server (see the README's compatibility table);
- fields OpenAI documents that do not change what the model says (``metadata``,
  ``store``, ``service_tier``, ``parallel_tool_calls``, ``prompt_cache_key``,
  ``reasoning_effort``, ``verbosity``, …) are accepted and ignored, so clients that send
  them by default work;
- documented fields asking for what Kizuna cannot do (tools, JSON output, logit bias,
  audio, …) are refused with a 400 naming the field, unless they hold their "off" value;
- anything else is a 422 naming the unknown field: a typo (``temprature``) must not be
  silently ignored.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from kizuna.serve.schemas import MAX_NEW_TOKENS, FieldError, StrictBody

#: Choices of one request (``n`` × prompts): each is a row of the same engine batch.
MAX_CHOICES = 8
MAX_STOPS = 4
MAX_TOP_LOGPROBS = 20
MAX_LEGACY_LOGPROBS = 5
INT64_MAX = 2**63 - 1
MAX_TEXT = 100_000

# A length bound also makes pydantic check the text is valid Unicode: a lone surrogate
# (legal in JSON) would fail later, in the tokenizer or the store, as a 500.
Text = Annotated[str, Field(max_length=MAX_TEXT)]
Stop = Annotated[str, Field(min_length=1, max_length=256)]


class UnsupportedFieldError(FieldError):
    """A documented OpenAI field asking for something Kizuna does not do (a 400)."""


class StreamOptions(StrictBody):
    """What a streamed response adds: a final chunk with the token usage."""

    include_usage: bool = False


class _OpenAIRequest(StrictBody):
    """Fields chat and completions share."""

    model: str = Field(min_length=1, description="a persona, persona@version, or base")
    temperature: float = Field(default=0.7, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=0, le=INT64_MAX)
    n: int = Field(default=1, ge=1, le=MAX_CHOICES)
    stop: Stop | list[Stop] | None = Field(default=None, description=f"up to {MAX_STOPS} strings")
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    repetition_penalty: float | None = Field(
        default=None, ge=1.0, le=2.0, description="vLLM's; Kizuna's default is 1.1"
    )
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(default=None, max_length=256)
    logit_bias: dict[str, float] | None = None
    # Documented hints that do not change the reply: accepted and ignored.
    metadata: dict[str, Any] | None = None
    store: bool | None = None
    service_tier: str | None = Field(default=None, max_length=64)
    # Kizuna's extensions.
    strength: float = Field(default=1.0, ge=0.0, le=1.0, description="Kizuna extension")
    consent: bool = Field(default=False, description="Kizuna extension")

    @field_validator("stop")
    @classmethod
    def _valid_stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop strings")
        return value

    @model_validator(mode="after")
    def _stream_options_need_a_stream(self) -> _OpenAIRequest:
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed with stream: true")
        return self

    @property
    def stops(self) -> tuple[str, ...]:
        """``stop`` as a tuple, whichever form it came in."""
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    @property
    def end_user(self) -> str | None:
        """Who the client says the end user is."""
        return self.user

    @property
    def choices(self) -> int:
        """How many choices the answer holds (each a row of the engine batch)."""
        return self.n

    @property
    def include_usage(self) -> bool:
        """Whether a stream ends with a usage chunk."""
        return self.stream_options is not None and self.stream_options.include_usage

    def refuse_unsupported(self) -> None:
        """Raise :class:`UnsupportedFieldError` for a field asking for what Kizuna
        cannot do."""
        if self.logit_bias:
            raise UnsupportedFieldError("logit_bias", "logit bias is not supported")


class TextPart(StrictBody):
    """One part of a message's content; only text parts are supported."""

    type: str = Field(max_length=64)
    text: Text | None = None


class ChatMessage(BaseModel):
    """One turn of a conversation (``name`` and other per-message fields are ignored).

    ``developer`` is OpenAI's newer name for ``system``.
    """

    role: Literal["system", "developer", "user", "assistant"]
    content: Text | Annotated[list[TextPart], Field(max_length=1024)]

    @property
    def text(self) -> str:
        """The message's text, its parts joined."""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text or "" for part in self.content)

    def refuse_unsupported(self, index: int) -> None:
        """Only text parts are supported."""
        if isinstance(self.content, list):
            for part_index, part in enumerate(self.content):
                if part.type != "text" or part.text is None:
                    raise UnsupportedFieldError(
                        f"messages.{index}.content.{part_index}",
                        f"only text content is supported, not {part.type!r}",
                    )


class ResponseFormat(StrictBody):
    """Only plain text replies are supported."""

    type: str = Field(max_length=64)
    json_schema: dict[str, Any] | None = None


class ChatCompletionRequest(_OpenAIRequest):
    """OpenAI-compatible: ``model`` is a persona, ``persona@version``, or ``base``."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_NEW_TOKENS)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_NEW_TOKENS)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    response_format: ResponseFormat | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    functions: list[dict[str, Any]] | None = None
    function_call: str | dict[str, Any] | None = None
    modalities: list[str] | None = None
    audio: dict[str, Any] | None = None
    prediction: dict[str, Any] | None = None
    web_search_options: dict[str, Any] | None = None
    # Documented hints that do not change the reply: accepted and ignored.
    parallel_tool_calls: bool | None = None
    prompt_cache_key: str | None = Field(default=None, max_length=1024)
    safety_identifier: str | None = Field(default=None, max_length=256)
    reasoning_effort: str | None = Field(default=None, max_length=32)
    verbosity: str | None = Field(default=None, max_length=32)

    @model_validator(mode="after")
    def _consistent(self) -> ChatCompletionRequest:
        both = self.max_tokens is not None and self.max_completion_tokens is not None
        if both and self.max_tokens != self.max_completion_tokens:
            raise ValueError("max_tokens and max_completion_tokens differ; give one")
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self

    @property
    def token_budget(self) -> int:
        """``max_completion_tokens`` (current clients) or ``max_tokens`` (older ones)."""
        return self.max_completion_tokens or self.max_tokens or 128

    @property
    def end_user(self) -> str | None:
        """Who the client says the end user is (``safety_identifier`` replaces ``user``)."""
        return self.user or self.safety_identifier

    def refuse_unsupported(self) -> None:
        """See :meth:`_OpenAIRequest.refuse_unsupported`; also tools and formats."""
        super().refuse_unsupported()
        text_only = self.response_format is None or self.response_format.type == "text"
        tools = "tool and function calling is not supported"
        refusals = [
            ("response_format.type", not text_only, "only the 'text' format is supported"),
            ("tools", bool(self.tools), tools),
            ("functions", bool(self.functions), tools),
            ("tool_choice", self.tool_choice not in (None, "none", "auto"), tools),
            ("function_call", self.function_call not in (None, "none", "auto"), tools),
            ("modalities", self.modalities not in (None, ["text"]), "only text is supported"),
            ("audio", self.audio is not None, "audio output is not supported"),
            ("prediction", self.prediction is not None, "predicted outputs are not supported"),
            (
                "web_search_options",
                self.web_search_options is not None,
                "web search is not supported",
            ),
        ]
        for field, asked, reason in refusals:
            if asked:
                raise UnsupportedFieldError(field, reason)
        for index, message in enumerate(self.messages):
            message.refuse_unsupported(index)


class CompletionRequest(_OpenAIRequest):
    """The legacy text completion: the prompt is continued as is, no chat template."""

    prompt: Text | list[Text] = Field(description="a text, or several (one choice set each)")
    max_tokens: int = Field(default=16, ge=1, le=MAX_NEW_TOKENS)
    logprobs: int | None = Field(default=None, ge=0, le=MAX_LEGACY_LOGPROBS)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = Field(default=None, ge=1, le=MAX_CHOICES)

    @field_validator("prompt")
    @classmethod
    def _valid_prompts(cls, value: str | list[str]) -> str | list[str]:
        prompts = [value] if isinstance(value, str) else value
        if not prompts or not all(prompt.strip() for prompt in prompts):
            raise ValueError("prompt is empty")
        return value

    @model_validator(mode="after")
    def _bounded(self) -> CompletionRequest:
        if self.choices > MAX_CHOICES:
            raise ValueError(f"prompts × n is over {MAX_CHOICES}")
        return self

    @property
    def prompts(self) -> list[str]:
        """``prompt`` as a list."""
        return [self.prompt] if isinstance(self.prompt, str) else self.prompt

    @property
    def choices(self) -> int:
        """``n`` choices for each prompt."""
        return len(self.prompts) * self.n

    def refuse_unsupported(self) -> None:
        """See :meth:`_OpenAIRequest.refuse_unsupported`; also suffixes and best-of."""
        super().refuse_unsupported()
        if self.suffix:
            raise UnsupportedFieldError("suffix", "insertion (suffix) is not supported")
        if self.best_of is not None and self.best_of != self.n:
            raise UnsupportedFieldError("best_of", "best_of other than n is not supported")
        if self.echo and self.logprobs is not None:
            raise UnsupportedFieldError(
                "echo", "echo with logprobs (the prompt's logprobs) is not supported"
            )
