"""LoRA adapters in PEFT format: their shape, loading, and per-request strength.

Strength ``s`` multiplies the adapter's delta: ``W x + s * (alpha / r) * B A x``, so
s = 0 is the base model and s = 1 the adapter as trained.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from transformers import PreTrainedModel


@dataclass(frozen=True)
class LoraShape:
    """Rank and placement of a personality adapter."""

    rank: int = 16
    alpha: int = 32
    dropout: float = 0.05
    # Every linear layer but the LM head: style lives in attention and MLP alike.
    target_modules: str | tuple[str, ...] = "all-linear"


def lora_config(shape: LoraShape) -> LoraConfig:
    """The PEFT config of a fresh adapter."""
    targets = shape.target_modules
    return LoraConfig(
        r=shape.rank,
        lora_alpha=shape.alpha,
        lora_dropout=shape.dropout,
        target_modules=targets if isinstance(targets, str) else list(targets),
        task_type="CAUSAL_LM",
    )


def new_adapter(base: PreTrainedModel, shape: LoraShape, *, seed: int = 0) -> PeftModel:
    """Wrap ``base`` with a freshly initialised adapter (B = 0, so it starts as the base).

    A's random init is drawn from ``seed`` without touching the global generator, so the
    same seed gives the same adapter whatever ran before.
    """
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return get_peft_model(base, lora_config(shape))


def load_adapter(
    base: PreTrainedModel, adapter_dir: Path, *, name: str, trainable: bool = False
) -> PeftModel:
    """Attach a saved PEFT adapter to ``base``: for inference, or to train on (warm start)."""
    return PeftModel.from_pretrained(
        base, str(adapter_dir), adapter_name=name, is_trainable=trainable
    )


def set_strength(model: PeftModel, *, adapter: str, strength: float) -> None:
    """Scale the adapter's delta to ``strength`` × its trained scale in every LoRA layer."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    for module in model.modules():
        if isinstance(module, LoraLayer):
            module.set_scale(adapter, strength)
