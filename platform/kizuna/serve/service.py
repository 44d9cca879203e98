"""The serving logic, free of HTTP: resolve adapters, batch, cache, record, measure.

``run_one`` hands one engine request to whatever batches them (``@serve.batch`` in
the Ray deployment) and awaits its own result, so rows of many concurrent requests,
with different adapters, share one engine pass.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
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
from kizuna.serve.openai_schemas import (
    INT64_MAX,
    ChatCompletionRequest,
    CompletionRequest,
)
from kizuna.serve.schemas import FieldError, TransformRequest, TransformResponse
from kizuna.store.adapters import AdapterNotFoundError
from kizuna.store.interactions import InteractionRecord

RunOne = Callable[[EngineRequest], Awaitable[Generation]]
BASE_MODEL_NAME = "base"
#: The store's public id column holds 128 characters; longer ids are hashed to fit,
#: leaving room for a choice's suffix.
_MAX_PLAIN_ID = 120


class BadRequestError(FieldError):
    """Input that passed the schema but names something that does not exist (a 422)."""


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
    if not idempotency_key:
        return str(uuid.uuid4())
    scoped = f"{caller.device_id or 'app'}:{idempotency_key}"
    if len(scoped) <= _MAX_PLAIN_ID:
        return scoped
    return "sha256:" + hashlib.sha256(scoped.encode()).hexdigest()


def choice_interaction_id(interaction_id: str, index: int) -> str:
    """The id of a request's ``index``-th choice: the request's own for the first."""
    return interaction_id if index == 0 else f"{interaction_id}.{index}"


def parse_persona_ref(reference: str, *, field: str) -> tuple[str, int | None]:
    """``tsundere`` → (tsundere, None); ``tsundere@3`` → (tsundere, 3); ``field`` names
    the request field the reference came from, for the error."""
    persona, _, version = reference.partition("@")
    if not version:
        return persona, None
    # isdigit alone admits '²' and other digits int() refuses.
    if not (version.isascii() and version.isdigit()):
        raise BadRequestError(field, f"version in {reference!r} must be a number")
    if int(version) > INT64_MAX:
        raise BadRequestError(field, f"version in {reference!r} is past the largest version")
    return persona, int(version)


def _choice_seed(seed: int | None, choice: int) -> int | None:
    # Choices of one seeded request differ from each other and are each reproducible.
    return None if seed is None else (seed + choice) % (INT64_MAX + 1)


@dataclass(frozen=True)
class Ask:
    """What a request asks of the engine, whatever the endpoint: ``n`` choices for each
    prompt, in one mix of adapters at one strength."""

    prompts: list[list[int]]
    request_texts: list[str]
    mix: dict[str, float]
    field: str
    strength: float
    params: SamplingParams
    persona: str | None
    consent: bool
    n: int = 1
    end_user: str | None = None

    @property
    def rows(self) -> int:
        """Engine rows the request takes."""
        return len(self.prompts) * self.n


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

    async def _answer(
        self,
        ask: Ask,
        caller: Caller,
        interaction_id: str,
        listeners: Sequence[TokenListener] | None = None,
    ) -> list[Reply]:
        """Every choice of ``ask`` as rows of the same batch, each logged under its own
        id (see :func:`choice_interaction_id`); prompt by prompt, choice by choice."""
        if self._in_flight + ask.rows > self._max_in_flight:
            raise OverloadedError(f"{self._in_flight} requests in flight; retry shortly")
        self._in_flight += ask.rows
        started = time.perf_counter()
        try:
            engine_mix, versions = self._resolve(ask.field, ask.mix)
            rows = [
                EngineRequest(
                    prompt=prompt,
                    mix=engine_mix,
                    strength=ask.strength,
                    params=replace(ask.params, seed=_choice_seed(ask.params.seed, choice)),
                    on_token=None if listeners is None else listeners[row * ask.n + choice],
                )
                for row, prompt in enumerate(ask.prompts)
                for choice in range(ask.n)
            ]
            results = await asyncio.gather(*(self._generate(row) for row in rows))
        finally:
            self._in_flight -= ask.rows
        latency_ms = (time.perf_counter() - started) * 1000
        replies = []
        for index, (generation, cached) in enumerate(results):
            reply = Reply(
                generation=generation,
                adapter_versions=versions,
                interaction_id=choice_interaction_id(interaction_id, index),
                latency_ms=latency_ms,
                cached=cached,
            )
            self._record(ask, caller, reply, request_text=ask.request_texts[index // ask.n])
            replies.append(reply)
        return replies

    async def _generate(self, request: EngineRequest) -> tuple[Generation, bool]:
        """The row's generation, from the cache where it is greedy and seen before."""
        greedy = request.params.temperature == 0
        key = (
            tuple(request.prompt),
            tuple(sorted(request.mix.items())),
            request.strength,
            request.params,
        )
        generation = self._cache.get(key) if greedy else None
        self.metrics.cache.labels(result="miss" if generation is None else "hit").inc()
        if generation is not None:
            if request.on_token is not None:
                for token in generation.chosen_tokens():
                    request.on_token(token)
            return generation, True
        generation = await self._run_one(request)
        if greedy:
            self._cache.put(key, generation)
        return generation, False

    def _record(self, ask: Ask, caller: Caller, reply: Reply, *, request_text: str) -> None:
        generation, versions = reply.generation, reply.adapter_versions
        self.journal.append(
            InteractionRecord(
                public_id=reply.interaction_id,
                request_text=request_text,
                output_text=generation.text,
                strength=ask.strength,
                adapter_versions=versions,
                token_entropies=generation.token_entropies,
                token_margins=generation.token_margins,
                latency_ms=reply.latency_ms,
                persona=ask.persona,
                mix=None if ask.persona else ask.mix,
                consent=ask.consent,
                device_id=caller.device_id,
                end_user=ask.end_user,
            )
        )
        label = ask.persona or "+".join(sorted(versions)) or BASE_MODEL_NAME
        self.metrics.entropy.labels(persona=label).observe(generation.entropy_mean)
        for name, version in versions.items():
            self.metrics.adapter_requests.labels(persona=name, version=str(version)).inc()

    async def transform(
        self, body: TransformRequest, caller: Caller, interaction_id: str
    ) -> TransformResponse:
        """Rewrite the body's text in its persona or mix (logged as ``interaction_id``)."""
        self._check_length("text", body.text)
        mix = body.mix if body.mix is not None else {body.persona or "": 1.0}
        persona = parse_persona_ref(body.persona, field="persona")[0] if body.persona else None
        ask = Ask(
            prompts=[prompt_ids(self._tokenizer, transform_messages(body.text))],
            request_texts=[body.text],
            mix=mix,
            field="persona" if body.persona else "mix",
            strength=body.strength,
            params=SamplingParams(
                max_new_tokens=body.max_new_tokens,
                temperature=body.temperature,
                top_p=body.top_p,
                seed=body.seed,
            ),
            persona=persona,
            consent=body.consent,
        )
        [reply] = await self._answer(ask, caller, interaction_id)
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
        listeners: Sequence[TokenListener] | None = None,
    ) -> list[Reply]:
        """The next assistant turn for the body's conversation, ``n`` times (logged as
        ``interaction_id`` and its choices'); ``listeners[i]`` hears choice i's tokens
        as they are chosen."""
        body.refuse_unsupported()
        for message in body.messages:
            self._check_length("messages", message.text)
        messages: list[Message] = [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text}
            for m in body.messages
        ]
        if messages[0]["role"] != "system":
            messages = with_system(messages)
        ask = Ask(
            prompts=[prompt_ids(self._tokenizer, messages)],
            request_texts=[body.messages[-1].text],
            params=self._openai_params(body, body.token_budget, body.top_logprobs or 0),
            **self._openai_fields(body),
        )
        return await self._answer(ask, caller, interaction_id, listeners)

    async def complete(
        self,
        body: CompletionRequest,
        caller: Caller,
        interaction_id: str,
        *,
        listeners: Sequence[TokenListener] | None = None,
    ) -> list[Reply]:
        """Each prompt continued ``n`` times, as text (no chat template); see :meth:`chat`."""
        body.refuse_unsupported()
        for prompt in body.prompts:
            self._check_length("prompt", prompt)
        ask = Ask(
            prompts=[self._tokenizer.encode(prompt) for prompt in body.prompts],
            request_texts=body.prompts,
            params=self._openai_params(body, body.max_tokens, body.logprobs or 0),
            **self._openai_fields(body),
        )
        return await self._answer(ask, caller, interaction_id, listeners)

    @staticmethod
    def _openai_params(
        body: ChatCompletionRequest | CompletionRequest, budget: int, top_logprobs: int
    ) -> SamplingParams:
        defaults = SamplingParams()
        return SamplingParams(
            max_new_tokens=budget,
            temperature=body.temperature,
            top_p=body.top_p,
            seed=body.seed,
            repetition_penalty=body.repetition_penalty or defaults.repetition_penalty,
            presence_penalty=body.presence_penalty,
            frequency_penalty=body.frequency_penalty,
            stop=body.stops,
            top_logprobs=top_logprobs,
        )

    @staticmethod
    def _openai_fields(body: ChatCompletionRequest | CompletionRequest) -> dict[str, Any]:
        """What an :class:`Ask` takes from an OpenAI body's ``model`` and its extensions."""
        base = body.model == BASE_MODEL_NAME
        return {
            "mix": {} if base else {body.model: 1.0},
            "field": "model",
            "strength": body.strength,
            "persona": None if base else parse_persona_ref(body.model, field="model")[0],
            "consent": body.consent,
            "n": body.n,
            "end_user": body.end_user,
        }

    def _check_length(self, field: str, text: str) -> None:
        if len(text) > self._max_input_chars:
            raise BadRequestError(
                field, f"{len(text)} characters; the limit is {self._max_input_chars}"
            )
