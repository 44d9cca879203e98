"""Decoding on preallocated buffers, each step replayed as one captured CUDA graph.

Batch-1 decode of a small model is launch-bound: one step is hundreds of small kernels
(more with the multi-LoRA layers), each launched in more time than it runs. On CUDA the
static decoder captures one decode step, with every buffer it touches fixed in memory (a
static KV cache; the token, position and key-mask buffers; the dense adapter routing),
and replays it: one launch per generated token. Batches are padded to powers of two and
cache lengths to multiples of ``length_step``; each (batch, length, with adapters or
not) bucket keeps its own buffers and graph, the least recently used dropped beyond
``max_buckets``.

On CPU the same buffers run eagerly, which is how the tests check this path against the
dynamic one.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

import torch
from transformers import PreTrainedModel, StaticCache
from transformers.cache_utils import Cache, StaticLayer

from kizuna.model.multi_lora import DenseRouting, RoutingContext

log = logging.getLogger(__name__)


def next_token_logits(
    model: PreTrainedModel,
    ids: torch.Tensor,
    attend: torch.Tensor,
    positions: torch.Tensor,
    cache: Cache,
) -> torch.Tensor:
    """Run ``ids`` through ``model`` into ``cache``; each row's next-token logits (fp32).

    ``attend`` is a 2-D padding mask, or a 4-D boolean one that goes to attention as it is
    (what the static path passes, so no mask is built inside a captured step).
    """
    output = model(
        input_ids=ids,
        attention_mask=attend,
        position_ids=positions,
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    logits: torch.Tensor = output.logits[:, -1].float()
    return logits


def _write_positions(cache: StaticCache) -> list[torch.Tensor]:
    """Each layer's next write position: a device tensor that a decode step reads and bumps."""
    return [layer.cumulative_length for layer in cache.layers if isinstance(layer, StaticLayer)]


class _Bucket:
    """The fixed buffers (and, once captured, the graph) of one bucket."""

    def __init__(
        self, model: PreTrainedModel, *, batch: int, length: int, slots: int, rank: int
    ) -> None:
        device = next(model.parameters()).device
        self.cache = StaticCache(config=model.config, max_cache_len=length)
        self.tokens = torch.zeros((batch, 1), dtype=torch.long, device=device)
        self.positions = torch.zeros((batch, 1), dtype=torch.long, device=device)
        self.keys = torch.zeros((batch, 1, 1, length), dtype=torch.bool, device=device)
        self.routing = DenseRouting.allocate(
            batch, slots=slots, rank=rank, dtype=model.dtype, device=device
        )
        self.written = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: torch.Tensor | None = None
        self.eager = False  # capture failed once: run this bucket's steps eagerly

    @property
    def batch(self) -> int:
        return self.tokens.shape[0]

    @property
    def length(self) -> int:
        return self.keys.shape[-1]


class StaticRun:
    """One generation on a bucket: a prefill, then one step per token."""

    def __init__(self, model: PreTrainedModel, bucket: _Bucket, rows: int, *, graphs: bool) -> None:
        self._model = model
        self._bucket = bucket
        self._rows = rows
        self._graphs = graphs

    def prefill(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Run the left-padded prompts ``ids`` (rows × width) into the cache."""
        bucket, width = self._bucket, ids.shape[1]
        bucket.cache.reset()
        padded_ids = torch.zeros((bucket.batch, width), dtype=torch.long, device=ids.device)
        padded_ids[: self._rows] = ids
        padded_mask = torch.zeros((bucket.batch, width), dtype=torch.long, device=ids.device)
        padded_mask[: self._rows] = mask
        padded_mask[self._rows :, -1] = 1  # filler rows: one token, so attention is defined
        valid = torch.zeros((bucket.batch, bucket.length), dtype=torch.bool, device=ids.device)
        valid[:, :width] = padded_mask.bool()
        causal = torch.ones((width, bucket.length), dtype=torch.bool, device=ids.device).tril()
        # A padding position attends to itself: a row of the mask with no key at all
        # would make attention NaN there, and its keys are masked for every real query.
        itself = torch.eye(width, bucket.length, dtype=torch.bool, device=ids.device)
        attend = (valid[:, None, None, :] & causal) | itself
        positions = (padded_mask.cumsum(-1) - 1).clamp(min=0)
        logits = next_token_logits(self._model, padded_ids, attend, positions, bucket.cache)
        bucket.keys.copy_(valid[:, None, None, :])
        bucket.positions.copy_(positions[:, -1:])
        bucket.written = width
        return logits[: self._rows]

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed each row's newest token; the next-token logits of every row."""
        bucket = self._bucket
        bucket.tokens[: self._rows, 0] = tokens
        bucket.positions.add_(1)
        bucket.keys[..., bucket.written] = True
        bucket.written += 1
        if self._graphs and bucket.graph is None and not bucket.eager:
            self._capture()
        if bucket.graph is None:
            logits = next_token_logits(
                self._model, bucket.tokens, bucket.keys, bucket.positions, bucket.cache
            )
        else:
            bucket.graph.replay()
            assert bucket.logits is not None
            logits = bucket.logits
        return logits[: self._rows]

    def _capture(self) -> None:
        bucket = self._bucket
        # Warm-up runs the step for real (CUDA graphs need one run outside capture): put
        # the cache's write positions back so the replay writes the same slot again.
        saved = [position.clone() for position in _write_positions(bucket.cache)]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            next_token_logits(
                self._model, bucket.tokens, bucket.keys, bucket.positions, bucket.cache
            )
        torch.cuda.current_stream().wait_stream(side)
        for position, value in zip(_write_positions(bucket.cache), saved, strict=True):
            position.copy_(value)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                bucket.logits = next_token_logits(
                    self._model, bucket.tokens, bucket.keys, bucket.positions, bucket.cache
                )
        except RuntimeError:
            log.warning(
                "capturing the decode step (batch %d) failed; it runs eagerly",
                bucket.batch,
                exc_info=True,
            )
            bucket.eager = True
            for position, value in zip(_write_positions(bucket.cache), saved, strict=True):
                position.copy_(value)
            return
        bucket.graph = graph


class StaticDecoder:
    """Buckets of fixed decode buffers for one model; captured graphs where ``graphs``."""

    def __init__(
        self,
        model: PreTrainedModel,
        context: RoutingContext,
        *,
        slots: int,
        rank: int,
        graphs: bool,
        max_batch: int = 64,
        max_length: int = 2048,
        length_step: int = 128,
        max_buckets: int = 8,
    ) -> None:
        self._model = model
        self._context = context
        self._slots = slots
        self._rank = rank
        self._graphs = graphs
        self.max_batch = max_batch
        self.max_length = max_length
        self._length_step = length_step
        self._max_buckets = max_buckets
        self._buckets: OrderedDict[tuple[int, int, bool], _Bucket] = OrderedDict()

    @property
    def captured_graphs(self) -> int:
        """How many buckets currently replay a captured graph."""
        return sum(bucket.graph is not None for bucket in self._buckets.values())

    def fits(self, batch: int, length: int) -> bool:
        """Whether ``batch`` rows of up to ``length`` tokens (prompt and reply) fit."""
        return batch <= self.max_batch and length <= self.max_length

    def start(self, rows: list[dict[int, float]], length: int) -> StaticRun:
        """A run for ``len(rows)`` rows routed by ``rows`` ({slot: weight} each)."""
        batch = 1 << (len(rows) - 1).bit_length()
        steps = -(-length // self._length_step)
        # A batch on the base model alone skips the adapter matmuls: its graph has none.
        routed = any(slot != 0 and weight != 0 for row in rows for slot, weight in row.items())
        key = (batch, min(steps * self._length_step, self.max_length), routed)
        bucket = self._buckets.pop(key, None)
        if bucket is None:
            bucket = _Bucket(
                self._model, batch=key[0], length=key[1], slots=self._slots, rank=self._rank
            )
            while len(self._buckets) >= self._max_buckets:
                self._buckets.popitem(last=False)
        self._buckets[key] = bucket
        bucket.routing.fill(rows)
        self._context.current = bucket.routing if routed else None
        return StaticRun(self._model, bucket, len(rows), graphs=self._graphs)
