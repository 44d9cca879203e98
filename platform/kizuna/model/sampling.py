"""Choosing each row's next token under its own sampling settings."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import torch

from kizuna.model.generation import SamplingParams


def sample_top_p(
    logits: torch.Tensor, *, temperature: float, top_p: float, generator: torch.Generator | None
) -> int:
    """Sample from softmax(logits / T) restricted to the smallest set of mass >= top_p."""
    # In float64 and shifted so the top logit is 0: a temperature near zero (1e-320, a
    # float32 zero) then sends the rest to -inf instead of making the softmax inf/inf.
    logits = logits.double().cpu()
    probs = torch.softmax((logits - logits.max()) / temperature, dim=-1)
    ordered, order = probs.sort(descending=True)
    # Keep a token while the mass before it is below top_p: the first always stays.
    keep = ordered.cumsum(0) - ordered < top_p
    ordered = torch.where(keep, ordered, torch.zeros_like(ordered))
    pick = torch.multinomial(ordered / ordered.sum(), 1, generator=generator)
    return int(order[pick])


def discourage_repeats(
    logits: torch.Tensor, replies: Sequence[Sequence[int]], params: Sequence[SamplingParams]
) -> None:
    """In place: each row's repetition, presence and frequency penalties and banned
    n-gram continuations.

    Only the reply's own tokens count (see :class:`SamplingParams`); a row whose reply
    would complete an n-gram it already wrote cannot pick that token.
    """
    for row, (reply, row_params) in enumerate(zip(replies, params, strict=True)):
        if not reply:
            continue
        counts = Counter(reply)
        seen = torch.tensor(list(counts), device=logits.device)
        if row_params.repetition_penalty > 1:
            values = logits[row, seen]
            penalty = row_params.repetition_penalty
            logits[row, seen] = torch.where(values > 0, values / penalty, values * penalty)
        if row_params.presence_penalty or row_params.frequency_penalty:
            uses = torch.tensor(list(counts.values()), device=logits.device, dtype=logits.dtype)
            logits[row, seen] -= row_params.presence_penalty + row_params.frequency_penalty * uses
        n = row_params.no_repeat_ngram
        if n and len(reply) >= n:
            tail = tuple(reply[len(reply) - n + 1 :])
            banned = [
                reply[i + n - 1]
                for i in range(len(reply) - n + 1)
                if tuple(reply[i : i + n - 1]) == tail
            ]
            if banned:
                logits[row, banned] = float("-inf")


def select_tokens(
    logits: torch.Tensor,
    params: Sequence[SamplingParams],
    generators: Sequence[torch.Generator | None],
) -> torch.Tensor:
    """The next token of every row: greedy where temperature is 0, else top-p sampling."""
    chosen = logits.argmax(dim=-1)
    for row, row_params in enumerate(params):
        if row_params.temperature > 0:
            chosen[row] = sample_top_p(
                logits[row],
                temperature=row_params.temperature,
                top_p=row_params.top_p,
                generator=generators[row],
            )
    return chosen
