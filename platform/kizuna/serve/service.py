"""The serving logic, free of HTTP: resolve adapters, batch, cache, record, measure.

``run_one`` hands one engine request to whatever batches them (``@serve.batch`` in
the Ray deployment) and awaits its own result, so rows of many concurrent requests,
with different adapters, share one engine pass.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker
from transformers import PreTrainedTokenizerBase

from kizuna.model.engine import EngineRequest, TokenListener
from kizuna.model.generation import Generation, SamplingParams
from kizuna.model.prompts import Message, prompt_ids, transform_messages, with_system
from kizuna.personas.loader import profile_files, unknown_persona
from kizuna.serve.adapters import AdapterRouter
from kizuna.serve.auth import Caller
from kizuna.serve.cache import ResultCache
from kizuna.serve.journal import InteractionJournal
from kizuna.serve.metrics import ServeMetrics
from kizuna.serve.schemas import ChatCompletionRequest, TransformRequest, TransformResponse
from kizuna.store.adapters import AdapterNotFoundError
from kizuna.store.interactions import InteractionRecord

RunOne = Callable[[EngineRequest], Awaitable[Generation]]
BASE_MODEL_NAME = "base"


class BadRequestError(ValueError):
    """Input that passed the schema but names something that does not exist."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class OverloadedError(RuntimeError):
    """More requests in flight than this replica accepts; retry after a moment."""

    retry_after_s = 1


@dataclass(frozen=True)
class Reply:
    """A generated reply and what serving it involved."""

    generation: Generation
    adapter_versions: dict[str, int]
    interaction_id: str
    latency_ms: float
    cached: bool

    def finish_reason(self, max_tokens: int) -> str:
        """OpenAI's ``finish_reason``: ``length`` where the token budget ended the reply."""
        return "length" if len(self.generation.token_ids) >= max_tokens else "stop"

    def kizuna_fields(self) -> dict[str, Any]:
        """What a chat completion adds to OpenAI's fields: the logged id and the entropy."""
        return {
            "interaction_id": self.interaction_id,
            "entropy_mean": self.generation.entropy_mean,
            "entropy_max": self.generation.entropy_max,
            "adapter_versions": self.adapter_versions,
        }


def public_interaction_id(caller: Caller, idempotency_key: str | None) -> str:
    """The logged interaction's id: a client's key (per device) makes a retry log once."""
    scope = caller.device_id or "app"
    return f"{scope}:{idempotency_key}" if idempotency_key else str(uuid.uuid4())


def parse_persona_ref(reference: str, *, field: str) -> tuple[str, int | None]:
    """``tsundere`` → (tsundere, None); ``tsundere@3`` → (tsundere, 3); ``field`` names
    the request field the reference came from, for the error."""
    persona, _, version = reference.partition("@")
    if not version:
        return persona, None
    if not version.isdigit():
        raise BadRequestError(field, f"version in {reference!r} must be a number")
    return persona, int(version)


class InferenceService:
    """Answers transform and chat requests for every persona of one base model."""

    def __init__(
        self,
        *,
        router: AdapterRouter,
        journal: InteractionJournal,
        sessions: sessionmaker[Session],
        metrics: ServeMetrics,
        run_one: RunOne,
        tokenizer: PreTrainedTokenizerBase,
        personas_dir: Path,
        max_input_chars: int,
        max_in_flight: int,
        cache_size: int,
    ) -> None:
        self.router = router
        self.journal = journal
        self.sessions = sessions
        self.metrics = metrics
        self._run_one = run_one
        self._tokenizer = tokenizer
        self.personas_dir = personas_dir
        self._max_input_chars = max_input_chars
        self._max_in_flight = max_in_flight
        self._in_flight = 0
        self._cache: ResultCache[Generation] = ResultCache(cache_size)
        self._known = set(profile_files(personas_dir))

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The base model's tokenizer (prompts in, replies out)."""
        return self._tokenizer

    def _check_known(self, field: str, persona: str) -> None:
        # Names are listed once, not per request; a miss lists the directory again so
        # a profile dropped in while serving is found without a restart.
        if persona not in self._known:
            self._known = set(profile_files(self.personas_dir))
        if persona not in self._known:
            raise BadRequestError(field, str(unknown_persona(persona, self._known)))

    def _resolve(
        self, field: str, mix: dict[str, float]
    ) -> tuple[dict[str, float], dict[str, int]]:
        engine_mix: dict[str, float] = {}
        versions: dict[str, int] = {}
        for reference, weight in mix.items():
            persona, version = parse_persona_ref(reference, field=field)
            self._check_known(field, persona)
            try:
                name, versions[persona] = self.router.resolve(persona, version)
            except AdapterNotFoundError as exc:
                raise BadRequestError(field, str(exc)) from exc
            engine_mix[name] = weight
        return engine_mix, versions

    async def _reply(
        self,
        *,
        messages: list[Message],
        mix: dict[str, float],
        field: str,
        strength: float,
        params: SamplingParams,
        caller: Caller,
        consent: bool,
        interaction_id: str,
        request_text: str,
        persona: str | None,
        on_token: TokenListener | None = None,
    ) -> Reply:
        if self._in_flight >= self._max_in_flight:
            raise OverloadedError(f"{self._in_flight} requests in flight; retry shortly")
        self._in_flight += 1
        started = time.perf_counter()
        try:
            engine_mix, versions = self._resolve(field, mix)
            prompt = prompt_ids(self._tokenizer, messages)
            key = (tuple(prompt), tuple(sorted(engine_mix.items())), strength, params)
            generation = self._cache.get(key) if params.temperature == 0 else None
            cached = generation is not None
            self.metrics.cache.labels(result="hit" if cached else "miss").inc()
            if generation is None:
                request = EngineRequest(
                    prompt=prompt,
                    mix=engine_mix,
                    strength=strength,
                    params=params,
                    on_token=on_token,
                )
                generation = await self._run_one(request)
                if params.temperature == 0:
                    self._cache.put(key, generation)
            elif on_token is not None:
                for token in generation.token_ids:
                    on_token(token)
        finally:
            self._in_flight -= 1
        latency_ms = (time.perf_counter() - started) * 1000
        self.journal.append(
            InteractionRecord(
                public_id=interaction_id,
                request_text=request_text,
                output_text=generation.text,
                strength=strength,
                adapter_versions=versions,
                token_entropies=generation.token_entropies,
                token_margins=generation.token_margins,
                latency_ms=latency_ms,
                persona=persona,
                mix=None if persona else mix,
                consent=consent,
                device_id=caller.device_id,
            )
        )
        label = persona or "+".join(sorted(versions)) or BASE_MODEL_NAME
        self.metrics.entropy.labels(persona=label).observe(generation.entropy_mean)
        for name, version in versions.items():
            self.metrics.adapter_requests.labels(persona=name, version=str(version)).inc()
        return Reply(
            generation=generation,
            adapter_versions=versions,
            interaction_id=interaction_id,
            latency_ms=latency_ms,
            cached=cached,
        )

    async def transform(
        self, body: TransformRequest, caller: Caller, interaction_id: str
    ) -> TransformResponse:
        """Rewrite the body's text in its persona or mix (logged as ``interaction_id``)."""
        self._check_length("text", body.text)
        mix = body.mix if body.mix is not None else {body.persona or "": 1.0}
        persona = parse_persona_ref(body.persona, field="persona")[0] if body.persona else None
        reply = await self._reply(
            messages=transform_messages(body.text),
            mix=mix,
            field="persona" if body.persona else "mix",
            strength=body.strength,
            params=SamplingParams(
                max_new_tokens=body.max_new_tokens,
                temperature=body.temperature,
                top_p=body.top_p,
                seed=body.seed,
            ),
            caller=caller,
            consent=body.consent,
            interaction_id=interaction_id,
            request_text=body.text,
            persona=persona,
        )
        generation = reply.generation
        return TransformResponse(
            output=generation.text,
            persona=persona,
            mix=body.mix,
            adapter_version=reply.adapter_versions.get(persona) if persona else None,
            adapter_versions=reply.adapter_versions,
            entropy_mean=generation.entropy_mean,
            entropy_max=generation.entropy_max,
            latency_ms=round(reply.latency_ms, 2),
            interaction_id=reply.interaction_id,
            cached=reply.cached,
        )

    async def chat(
        self,
        body: ChatCompletionRequest,
        caller: Caller,
        interaction_id: str,
        *,
        on_token: TokenListener | None = None,
    ) -> Reply:
        """The next assistant turn for the body's conversation (logged as
        ``interaction_id``); ``on_token`` hears each of its tokens as it is chosen."""
        for message in body.messages:
            self._check_length("messages", message.content)
        messages: list[Message] = [m.model_dump() for m in body.messages]
        if messages[0]["role"] != "system":
            messages = with_system(messages)
        persona = (
            None
            if body.model == BASE_MODEL_NAME
            else parse_persona_ref(body.model, field="model")[0]
        )
        return await self._reply(
            messages=messages,
            mix={} if persona is None else {body.model: 1.0},
            field="model",
            strength=body.strength,
            params=SamplingParams(
                max_new_tokens=body.max_tokens,
                temperature=body.temperature,
                top_p=body.top_p,
                seed=body.seed,
            ),
            caller=caller,
            consent=body.consent,
            interaction_id=interaction_id,
            request_text=body.messages[-1].content,
            persona=persona,
            on_token=on_token,
        )

    def _check_length(self, field: str, text: str) -> None:
        if len(text) > self._max_input_chars:
            raise BadRequestError(
                field, f"{len(text)} characters; the limit is {self._max_input_chars}"
            )
