"""The serving engine: one base model, many resident adapters, mixed batches.

Each request names a mix of adapters (one adapter is a mix of one; none is the base
model), a strength, and its own sampling settings. A batch of requests runs as one
left-padded decode over a shared KV cache; the multi-LoRA layers apply every row's own
adapters, so a batch may mix personas, strengths and fusions freely.

Two ways to step the decode: a growing cache with per-adapter segments (any batch and
length; the default on CPU), and :mod:`kizuna.model.static_decode`'s fixed buffers with
each step replayed as a captured CUDA graph (the default on CUDA, for batches and lengths
that fit its buckets).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from kizuna.config import Settings
from kizuna.model.base import load_base_model, load_tokenizer, resolve_device
from kizuna.model.generation import (
    ChosenToken,
    FinishReason,
    Generation,
    SamplingParams,
    decode_reply,
    reply_text,
    uncertainty_of,
)
from kizuna.model.multi_lora import (
    MultiLoraLinear,
    Routing,
    RoutingContext,
    install_multi_lora,
    read_peft_adapter,
)
from kizuna.model.quantize import quantize_base_int8, weight_bytes
from kizuna.model.sampling import discourage_repeats, select_tokens
from kizuna.model.static_decode import StaticDecoder, next_token_logits


class AdapterNotResidentError(KeyError):
    """A request names an adapter the engine has not loaded."""

    def __str__(self) -> str:
        return str(self.args[0])


TokenListener = Callable[[ChosenToken], None]


@dataclass(frozen=True)
class EngineRequest:
    """One row of a batch: a prompt, the adapters it mixes, its strength and sampling.

    ``on_token``, if given, is called from the decoding thread with each token the row
    chooses, as it is chosen (a streamed reply); it must return at once and not raise.
    A stream must hold back text that may begin a stop string: the row's tokens go on
    until the stop string is complete.
    """

    prompt: list[int]
    mix: dict[str, float] = field(default_factory=dict)
    strength: float = 1.0
    params: SamplingParams = field(default_factory=SamplingParams)
    on_token: TokenListener | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.prompt:
            raise ValueError("prompt is empty")
        if not 0.0 <= self.strength <= 1.0:
            raise ValueError(f"strength must be in [0, 1], got {self.strength}")
        if any(weight < 0 for weight in self.mix.values()):
            raise ValueError("mix weights must be >= 0")
        if self.mix and sum(self.mix.values()) <= 0:
            raise ValueError("mix weights must not sum to 0")

    def row_weights(self) -> dict[str, float]:
        """Each adapter's weight in this row: strength × its normalised mix weight."""
        total = sum(self.mix.values())
        return {name: self.strength * weight / total for name, weight in self.mix.items()}


class Stepper(Protocol):
    """Runs the prompts into a KV cache, then one token per row at a time."""

    def prefill(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Next-token logits (rows × vocab, fp32) after the left-padded prompts."""
        ...

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Next-token logits after feeding each row's newest token."""
        ...


class DynamicStepper:
    """A cache and mask that grow by one position per step: any batch, any length."""

    def __init__(self, model: PreTrainedModel) -> None:
        self._model = model
        self._cache = DynamicCache()
        self._mask = torch.empty(0)
        self._positions = torch.empty(0)

    def prefill(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """See :class:`Stepper`."""
        self._mask = mask
        self._positions = (mask.cumsum(-1) - 1).clamp(min=0)
        return self._run(ids)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """See :class:`Stepper`."""
        ones = torch.ones((len(tokens), 1), dtype=self._mask.dtype, device=tokens.device)
        self._mask = torch.cat([self._mask, ones], 1)
        self._positions = self._positions[:, -1:] + 1
        return self._run(tokens[:, None])

    def _run(self, ids: torch.Tensor) -> torch.Tensor:
        return next_token_logits(self._model, ids, self._mask, self._positions, self._cache)


class Engine:
    """A base model with up to ``max_adapters`` LoRA adapters resident, run in batches.

    ``static_decode`` picks the stepping (see the module docstring): None means captured
    graphs on CUDA and the dynamic cache elsewhere; True on CPU runs the static buffers
    eagerly (what the tests compare).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        max_adapters: int = 16,
        max_rank: int = 16,
        static_decode: bool | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_rank = max_rank
        self._context = RoutingContext()
        # Slot 0 stays zero: rows (or mix entries) without an adapter point at it.
        self._layers: dict[str, MultiLoraLinear] = install_multi_lora(
            model, slots=max_adapters + 1, rank=max_rank, context=self._context
        )
        self._slots: OrderedDict[str, int] = OrderedDict()
        self._free = list(range(max_adapters, 0, -1))
        self._lock = threading.Lock()
        self.device = next(model.parameters()).device
        on_cuda = self.device.type == "cuda"
        self._static = (
            StaticDecoder(
                model, self._context, slots=max_adapters + 1, rank=max_rank, graphs=on_cuda
            )
            if (on_cuda if static_decode is None else static_decode)
            else None
        )

    @property
    def resident(self) -> list[str]:
        """Adapter names, least recently used first."""
        return list(self._slots)

    @property
    def static_decoder(self) -> StaticDecoder | None:
        """The fixed-buffer decoder, where this engine uses one."""
        return self._static

    def base_weight_bytes(self) -> int:
        """The base model's weight bytes, without the adapter slot tables."""
        tables = sum(
            table.numel() * table.element_size()
            for layer in self._layers.values()
            for table in (layer.lora_a, layer.lora_b)
        )
        return weight_bytes(self.model) - tables

    def load_adapter(self, name: str, directory: Path) -> None:
        """Make a PEFT adapter resident under ``name``, evicting the least recently used."""
        adapter = read_peft_adapter(directory)
        if adapter.rank > self.max_rank:
            raise ValueError(f"adapter {name!r} has rank {adapter.rank} > {self.max_rank}")
        unknown = set(adapter.factors) - set(self._layers)
        if unknown:
            raise ValueError(
                f"adapter {name!r} targets modules this model lacks: {sorted(unknown)[:3]}"
            )
        with self._lock:
            if name in self._slots:
                slot = self._slots.pop(name)
            elif self._free:
                slot = self._free.pop()
            else:
                _, slot = self._slots.popitem(last=False)
            for module, layer in self._layers.items():
                a, b = adapter.factors.get(module, (None, None))
                layer.set_slot(slot, a, b)
            self._slots[name] = slot

    def unload_adapter(self, name: str) -> None:
        """Free ``name``'s slot."""
        with self._lock:
            slot = self._slots.pop(name)
            for layer in self._layers.values():
                layer.set_slot(slot, None, None)
            self._free.append(slot)

    def _slot_weights(self, requests: Sequence[EngineRequest]) -> list[dict[int, float]]:
        """Each row's {slot: weight}; marks the adapters used as recently used."""
        rows: list[dict[int, float]] = []
        for request in requests:
            pairs: dict[int, float] = {}
            for name, weight in request.row_weights().items():
                if name not in self._slots:
                    raise AdapterNotResidentError(f"adapter {name!r} is not loaded")
                self._slots.move_to_end(name)
                pairs[self._slots[name]] = weight
            rows.append(pairs)
        return rows

    def generate(self, requests: Sequence[EngineRequest]) -> list[Generation]:
        """Run ``requests`` as one batch; results come back in the same order."""
        if not requests:
            return []
        with self._lock, torch.inference_mode():
            try:
                return self._decode(requests, self._slot_weights(requests))
            finally:
                self._context.current = None

    def forward_logits(self, requests: Sequence[EngineRequest]) -> list[torch.Tensor]:
        """Each row's logits over its whole prompt (prompt_len, vocab), in one routed pass.

        This is teacher forcing: the distribution every position of the prompt predicts,
        which is what a distillation loss or an equivalence check needs.
        """
        if not requests:
            return []
        with self._lock, torch.inference_mode():
            rows = self._slot_weights(requests)
            self._context.current = Routing.from_rows(rows, device=self.device)
            try:
                ids, mask = self._left_padded(requests)
                positions = (mask.cumsum(-1) - 1).clamp(min=0)
                logits = self.model(
                    input_ids=ids, attention_mask=mask, position_ids=positions
                ).logits
            finally:
                self._context.current = None
        return [logits[row, -len(r.prompt) :].float() for row, r in enumerate(requests)]

    def _left_padded(self, requests: Sequence[EngineRequest]) -> tuple[torch.Tensor, torch.Tensor]:
        batch, width = len(requests), max(len(r.prompt) for r in requests)
        ids = torch.full((batch, width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((batch, width), dtype=torch.long)
        for row, request in enumerate(requests):  # left padding keeps every row's end aligned
            ids[row, width - len(request.prompt) :] = torch.tensor(request.prompt)
            mask[row, width - len(request.prompt) :] = 1
        return ids.to(self.device), mask.to(self.device)

    def _stepper(self, rows: list[dict[int, float]], length: int) -> Stepper:
        """The static decoder where the batch fits it, else a dynamic cache; routed."""
        if self._static is not None and self._static.fits(len(rows), length):
            return self._static.start(rows, length)
        self._context.current = Routing.from_rows(rows, device=self.device)
        return DynamicStepper(self.model)

    def _decode(
        self, requests: Sequence[EngineRequest], rows: list[dict[int, float]]
    ) -> list[Generation]:
        ids, mask = self._left_padded(requests)
        longest = max(r.params.max_new_tokens for r in requests)
        stepper = self._stepper(rows, ids.shape[1] + longest)
        logits = stepper.prefill(ids, mask)
        params = [r.params for r in requests]
        generators = [_generator(p.seed) for p in params]
        replies = [_Reply() for _ in requests]
        top_k = max(p.top_logprobs for p in params)
        eos = self.tokenizer.eos_token_id
        for step in range(longest):
            # Entropy, margin and log-probabilities from one softmax of the raw logits,
            # before the penalties below change them.
            log_probs = torch.log_softmax(logits.float(), dim=-1)
            entropy, margin = uncertainty_of(log_probs)
            too_early = [row for row, p in enumerate(params) if step < p.min_new_tokens]
            if too_early:
                logits[too_early, eos] = float("-inf")
            discourage_repeats(logits, [reply.tokens for reply in replies], params)
            chosen = select_tokens(logits, params, generators)
            chosen_logprob = log_probs.gather(1, chosen[:, None])[:, 0]
            top = log_probs.topk(top_k, dim=-1) if top_k else None
            # One copy to the host per step, whatever the batch size: per-row device ops
            # would cost a launch (or a sync) each.
            picked, row_entropy, row_margin, row_logprob = (
                t.tolist() for t in (chosen, entropy, margin, chosen_logprob)
            )
            top_ids, top_values = (top.indices.tolist(), top.values.tolist()) if top else ([], [])
            for row, request in enumerate(requests):
                reply = replies[row]
                if reply.finish is not None:
                    continue
                k = request.params.top_logprobs
                token = ChosenToken(
                    id=picked[row],
                    logprob=round(row_logprob[row], 6),
                    top=_alternatives(top_ids[row][:k], top_values[row][:k]) if k else (),
                )
                reply.add(token, entropy=row_entropy[row], margin=row_margin[row])
                if request.on_token is not None:
                    request.on_token(token)
                reply.check_end(self.tokenizer, request.params, eos=eos)
            if all(reply.finish is not None for reply in replies):
                break
            logits = stepper.step(chosen)
        return [
            reply.generation(self.tokenizer, prompt_tokens=len(request.prompt))
            for request, reply in zip(requests, replies, strict=True)
        ]


@dataclass
class _Reply:
    """One row's reply while it is decoded."""

    tokens: list[int] = field(default_factory=list)
    entropies: list[float] = field(default_factory=list)
    margins: list[float] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top: list[list[tuple[int, float]]] = field(default_factory=list)
    finish: FinishReason | None = None
    #: The text up to a stop string, once one appeared.
    stopped_text: str | None = None

    def add(self, token: ChosenToken, *, entropy: float, margin: float) -> None:
        self.tokens.append(token.id)
        self.entropies.append(round(entropy, 6))
        self.margins.append(round(margin, 6))
        self.logprobs.append(token.logprob)
        if token.top:
            self.top.append(list(token.top))

    def check_end(
        self, tokenizer: PreTrainedTokenizerBase, params: SamplingParams, *, eos: int
    ) -> None:
        if params.stop:
            text, stopped = reply_text(tokenizer, self.tokens, params.stop)
            if stopped:
                self.stopped_text, self.finish = text, "stop"
                return
        if self.tokens[-1] == eos:
            self.finish = "stop"
        elif len(self.tokens) >= params.max_new_tokens:
            self.finish = "length"

    def generation(self, tokenizer: PreTrainedTokenizerBase, *, prompt_tokens: int) -> Generation:
        text = self.stopped_text
        return Generation(
            text=decode_reply(tokenizer, self.tokens) if text is None else text,
            token_ids=self.tokens,
            token_entropies=self.entropies,
            token_margins=self.margins,
            prompt_tokens=prompt_tokens,
            finish_reason=self.finish or "length",
            token_logprobs=self.logprobs,
            top_logprobs=self.top,
        )


def _alternatives(ids: list[int], values: list[float]) -> tuple[tuple[int, float], ...]:
    return tuple((token, round(value, 6)) for token, value in zip(ids, values, strict=True))


def _generator(seed: int | None) -> torch.Generator | None:
    return torch.Generator().manual_seed(seed) if seed is not None else None


def build_engine(settings: Settings, *, max_adapters: int = 16) -> Engine:
    """The configured base model, on the configured device and quantization, with room
    for adapters."""
    tokenizer = load_tokenizer(settings.resolved_base_model)
    model = load_base_model(
        settings.resolved_base_model,
        device=resolve_device(settings.device),
        quantization=settings.quantization,
    )
    engine = Engine(
        model,
        tokenizer,
        max_adapters=max_adapters,
        static_decode=None if settings.cuda_graphs else False,
    )
    if settings.quantization == "int8":
        quantize_base_int8(engine.model)
    return engine
