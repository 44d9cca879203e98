"""In-process style transfer and chat with one persona's adapter, as registered in the store.

This is the embedded path the CLI uses without a server: resolve the persona's stable
(or a named) version in the registry, fetch its artifact with the sha256 checked, make
it resident in the multi-adapter engine, and generate with it. Serving runs the same
engine with many adapters and batches.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from kizuna.config import Settings
from kizuna.model.engine import EngineRequest, build_engine
from kizuna.model.generation import SamplingParams
from kizuna.model.prompts import Message, prompt_ids, transform_messages
from kizuna.personas import get_profile
from kizuna.serve.adapters import make_resident
from kizuna.store import adapters as adapter_store
from kizuna.store.db import make_engine, session_factory


@dataclass(frozen=True)
class TransformResult:
    """A reply and what the serving path records about it."""

    output: str
    persona: str
    adapter_version: int
    strength: float
    entropy_mean: float
    entropy_max: float
    token_entropies: list[float]
    latency_ms: float
    new_tokens: int


def validate_text(text: str, *, limit: int) -> str:
    """Reject empty or over-long input with a message that names the problem."""
    if not text.strip():
        raise ValueError("text is empty")
    if len(text) > limit:
        raise ValueError(f"text is {len(text)} characters; the limit is {limit}")
    return text


class PersonaModel:
    """The base model with one persona's adapter attached, ready to generate."""

    def __init__(self, settings: Settings, *, persona: str, version: int | None = None) -> None:
        get_profile(persona, settings.resolved_personas_dir)
        # The registry is asked first: a missing version fails before the model loads.
        with session_factory(make_engine(settings.resolved_database_url))() as session:
            record = adapter_store.resolve_adapter(session, persona=persona, version=version)
        self.engine = build_engine(settings, max_adapters=1)
        self.tokenizer = self.engine.tokenizer
        make_resident(self.engine, record, name=persona, cache_dir=settings.adapter_cache_dir)
        self.persona = persona
        self.version = record.version
        self.max_input_chars = settings.max_input_chars

    def reply(
        self, messages: list[Message], *, strength: float, params: SamplingParams
    ) -> TransformResult:
        """Generate the next assistant turn for ``messages`` at ``strength``."""
        request = EngineRequest(
            prompt=prompt_ids(self.tokenizer, messages),
            mix={self.persona: 1.0},
            strength=strength,
            params=params,
        )
        started = time.perf_counter()
        generation = self.engine.generate([request])[0]
        return TransformResult(
            output=generation.text,
            persona=self.persona,
            adapter_version=self.version,
            strength=strength,
            entropy_mean=generation.entropy_mean,
            entropy_max=generation.entropy_max,
            token_entropies=generation.token_entropies,
            latency_ms=(time.perf_counter() - started) * 1000,
            new_tokens=len(generation.token_ids),
        )

    def transform(self, text: str, *, strength: float, params: SamplingParams) -> TransformResult:
        """Rewrite ``text`` in the persona's voice at ``strength``."""
        text = validate_text(text, limit=self.max_input_chars)
        return self.reply(transform_messages(text), strength=strength, params=params)
