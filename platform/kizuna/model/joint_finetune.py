"""Several personas' adapters trained in one pass over the frozen base (mLoRA-style).

Every step stacks a batch of each persona's pairs into one batch of the base model; the
multi-LoRA layers the engine serves with route each row to its own persona's slot, at
the row's strength. The base's matmuls (nearly all of the compute) are shared; each
adapter only sees its own rows' gradients, because the slots' parameters are disjoint
and the loss is the sum of the personas' own mean losses. Clipping is per adapter too, so
an adapter trained beside five others ends where it would have ended alone (tested).

The slots hold PEFT's unscaled factors while training (the α/r scale rides in each row's
routing weight), so :meth:`JointTraining.save_adapter` writes an ordinary PEFT adapter
that the engine, PEFT and the retrain job all load.
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from kizuna.model.finetune import (
    IGNORE_INDEX,
    Encoded,
    FinetuneArgs,
    Pair,
    StepReport,
    autocast,
    collate,
    encode_pair,
    labelled_logits,
    strength_batches,
    warmup_linear_decay,
)
from kizuna.model.lora import LoraShape, lora_config
from kizuna.model.multi_lora import (
    PEFT_PREFIX,
    DenseRouting,
    MultiLoraLinear,
    RoutingContext,
    install_multi_lora,
)
from kizuna.model.quantize import PEFT_WEIGHTS_FILE


@dataclass
class JointTraining:
    """Adapters being trained together on one base model, one slot each."""

    model: PreTrainedModel
    shape: LoraShape
    slots: dict[str, int]
    layers: dict[str, MultiLoraLinear]
    context: RoutingContext
    losses: dict[str, list[float]] = field(default_factory=dict)

    @classmethod
    def install(
        cls, model: PreTrainedModel, personas: Sequence[str], shape: LoraShape, *, seed: int
    ) -> JointTraining:
        """Wrap ``model``'s linear layers with one fresh, trainable slot per persona."""
        context = RoutingContext()
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        layers = install_multi_lora(
            model, slots=len(personas) + 1, rank=shape.rank, context=context
        )
        slots = {persona: slot for slot, persona in enumerate(personas, start=1)}
        for persona, slot in slots.items():
            # Seeded by persona, so an adapter's start does not depend on its neighbours.
            generator = torch.Generator().manual_seed(seed ^ zlib.crc32(persona.encode()))
            for layer in layers.values():
                _init_like_peft(layer.lora_a.data[slot], generator)
        for layer in layers.values():
            layer.lora_a.requires_grad_(True)
            layer.lora_b.requires_grad_(True)
        return cls(model, shape, slots, layers, context, {p: [] for p in personas})

    def parameters(self) -> list[nn.Parameter]:
        """The slot tables: every trainable tensor."""
        return [p for layer in self.layers.values() for p in (layer.lora_a, layer.lora_b)]

    def routing(self, personas: Sequence[str], strengths: Sequence[float]) -> DenseRouting:
        """Each row on its persona's slot, weighted by strength × α/r (PEFT's scale)."""
        scale = self.shape.alpha / self.shape.rank
        rows = [{self.slots[p]: s * scale} for p, s in zip(personas, strengths, strict=True)]
        dense = DenseRouting.allocate(
            len(rows),
            slots=len(self.slots) + 1,
            rank=self.shape.rank,
            dtype=torch.float32,
            device=next(self.model.parameters()).device,
        )
        dense.fill(rows)
        return dense

    def clip_per_adapter(self, max_norm: float) -> None:
        """Clip each slot's gradient to ``max_norm`` on its own (as training it alone would)."""
        squares = torch.zeros(len(self.slots) + 1)
        for layer in self.layers.values():
            if layer.lora_a.grad is not None and layer.lora_b.grad is not None:
                squares += layer.lora_a.grad.pow(2).sum(dim=(1, 2))
                squares += layer.lora_b.grad.pow(2).sum(dim=(0, 2))
        factors = (max_norm / (squares.sqrt() + 1e-6)).clamp(max=1.0)
        for layer in self.layers.values():
            if layer.lora_a.grad is not None and layer.lora_b.grad is not None:
                layer.lora_a.grad.mul_(factors[:, None, None])
                layer.lora_b.grad.mul_(factors[None, :, None])

    def save_adapter(self, persona: str, directory: Path) -> None:
        """``persona``'s slot as a PEFT LoRA directory (config + safetensors)."""
        slot = self.slots[persona]
        tensors: dict[str, torch.Tensor] = {}
        for module, layer in self.layers.items():
            prefix = f"{PEFT_PREFIX}{module}"
            tensors[f"{prefix}.lora_A.weight"] = layer.lora_a.data[slot].detach().clone()
            tensors[f"{prefix}.lora_B.weight"] = layer.lora_b.data[:, slot].detach().clone()
        directory.mkdir(parents=True, exist_ok=True)
        config = lora_config(self.shape)
        config.target_modules = sorted(self.layers)
        config.save_pretrained(str(directory))
        save_file(tensors, str(directory / PEFT_WEIGHTS_FILE))

    def remove(self) -> PreTrainedModel:
        """Put the plain linear layers back; the base model is as it was before install."""
        for module, layer in self.layers.items():
            parent_name, _, child = module.rpartition(".")
            parent = self.model.get_submodule(parent_name) if parent_name else self.model
            setattr(parent, child, layer.base)
        self.layers = {}
        return self.model


def _init_like_peft(a: torch.Tensor, generator: torch.Generator) -> None:
    # PEFT's default LoRA init: A ~ kaiming_uniform(a=√5), B = 0 (the adapter starts as
    # the base). kaiming_uniform with a=√5 is U(-1/√fan_in, 1/√fan_in).
    bound = 1 / math.sqrt(a.shape[1])
    a.copy_(torch.rand(a.shape, generator=generator) * 2 * bound - bound)


def _endless(
    tokenizer: PreTrainedTokenizerBase, pairs: Sequence[Pair], args: FinetuneArgs
) -> Iterator[list[Encoded]]:
    encoded = [encode_pair(tokenizer, pair, max_length=args.max_length) for pair in pairs]
    return strength_batches(encoded, batch_size=args.batch_size, seed=args.seed)


def train_jointly(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Mapping[str, Sequence[Pair]],
    shape: LoraShape,
    args: FinetuneArgs,
    *,
    on_step: Callable[[StepReport], None] | None = None,
) -> JointTraining:
    """Train one adapter per persona of ``pairs`` for ``args.steps`` shared steps.

    Each step holds ``args.batch_size`` rows of every persona. The returned training
    still wraps ``model``: save the adapters, then :meth:`JointTraining.remove`.
    """
    empty = sorted(p for p, rows in pairs.items() if not rows)
    if not pairs or empty:
        raise ValueError(f"no training pairs for persona(s) {empty or 'any'}")
    torch.manual_seed(args.seed)
    personas = sorted(pairs)
    training = JointTraining.install(model, personas, shape, seed=args.seed)
    batches = {p: _endless(tokenizer, pairs[p], args) for p in personas}
    optimizer = torch.optim.AdamW(
        training.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay
    )
    schedule = warmup_linear_decay(optimizer, steps=args.steps)
    device = next(model.parameters()).device
    model.train()
    try:
        for step in range(1, args.steps + 1):
            started = time.perf_counter()
            rows = [(p, item) for p in personas for item in next(batches[p])]
            with autocast(args.precision, device):
                losses = _joint_loss(training, tokenizer, rows, device)
            torch.autograd.backward(torch.stack(list(losses.values())).sum())
            training.clip_per_adapter(1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            for persona, loss in losses.items():
                training.losses[persona].append(float(loss.detach()))
            if on_step is not None:
                on_step(
                    StepReport(
                        step=step,
                        total_steps=args.steps,
                        loss=sum(float(v.detach()) for v in losses.values()) / len(losses),
                        tokens=sum(len(item.input_ids) for _, item in rows),
                        seconds=time.perf_counter() - started,
                    )
                )
    finally:
        training.context.current = None
        model.eval()
    return training


def _joint_loss(
    training: JointTraining,
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[tuple[str, Encoded]],
    device: torch.device,
) -> dict[str, torch.Tensor]:
    """Each persona's mean target-token cross-entropy over its rows of one shared pass."""
    batch = {
        k: v.to(device)
        for k, v in collate([item for _, item in rows], pad_id=tokenizer.pad_token_id).items()
    }
    training.context.current = training.routing(
        [p for p, _ in rows], [item.strength for _, item in rows]
    )
    logits, labels = labelled_logits(training.model, batch)
    token_rows = (batch["labels"][:, 1:] != IGNORE_INDEX).nonzero()[:, 0]
    per_token = nn.functional.cross_entropy(logits, labels, reduction="none")
    owner = torch.tensor([training.slots[p] for p, _ in rows], device=device)[token_rows]
    return {persona: per_token[owner == slot].mean() for persona, slot in training.slots.items()}
