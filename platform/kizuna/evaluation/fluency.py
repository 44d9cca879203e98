"""Fluency: perplexity of generated text under the base model (no adapter)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from kizuna.model.engine import Engine, EngineRequest


def perplexity(engine: Engine, texts: Sequence[str], *, batch_size: int = 16) -> float:
    """exp(mean next-token NLL) of ``texts`` under the engine's base model.

    Each text is scored as plain text after the tokenizer's BOS (or EOS) token, so its
    first token is predicted too; texts that tokenize to nothing are skipped.
    """
    tokenizer = engine.tokenizer
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    sequences = [
        [start, *ids]
        for ids in (tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts)
        if ids
    ]
    if not sequences:
        raise ValueError("no text to score")
    total_nll, total_tokens = 0.0, 0
    for begin in range(0, len(sequences), batch_size):
        chunk = sequences[begin : begin + batch_size]
        logits = engine.forward_logits([EngineRequest(prompt=ids) for ids in chunk])
        for ids, row in zip(chunk, logits, strict=True):
            targets = torch.tensor(ids[1:], device=row.device)
            nll = torch.nn.functional.cross_entropy(row[:-1], targets, reduction="sum")
            total_nll += float(nll)
            total_tokens += len(ids) - 1
    return math.exp(total_nll / total_tokens)
