"""LoRA fine-tuning on input/target pairs: the one training function of Kizuna.

Bootstrap trains each persona's first adapter with :func:`train_lora`; the re-distillation
job and the federated clients reuse :func:`encode_pair`, :func:`collate`,
:func:`strength_batches` and :func:`train_lora` rather than writing their own.

Each pair carries the strength it illustrates (subtle 0.3, standard 0.6, exaggerated
1.0). A batch holds pairs of one strength, and the adapter's scale is set to that
strength for the step, so at inference the strength knob selects the intensity the
adapter learned for it.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Literal, cast

import torch
from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from kizuna.model.lora import set_strength
from kizuna.model.prompts import prompt_ids, reply_ids, transform_messages

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Pair:
    """One training example: a neutral input, its stylized target, the strength shown."""

    input: str
    target: str
    strength: float = 1.0


Precision = Literal["auto", "fp32", "bf16"]


@dataclass(frozen=True)
class FinetuneArgs:
    """Optimisation settings of one LoRA fine-tuning run."""

    # ~4 s a step of 8 rows for SmolLM2-135M on 2 CPU cores in fp32.
    steps: int = 16
    batch_size: int = 8
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    max_length: int = 192
    seed: int = 0
    #: bf16 autocast (fp32 master weights): 2.0x the tokens/s of fp32 for SmolLM2-135M
    #: on 2 AVX512-BF16 cores (197 vs 97, joint six-persona steps). ``auto`` takes it
    #: where the CPU or GPU computes bf16 natively, else fp32.
    precision: Precision = "auto"


def autocast(precision: Precision, device: torch.device) -> AbstractContextManager[object]:
    """The autocast context of a training step at ``precision`` on ``device``."""
    if precision == "auto":
        native = (
            torch.cuda.is_bf16_supported()
            if device.type == "cuda"
            else bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        )
        precision = "bf16" if native else "fp32"
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


@dataclass(frozen=True)
class StepReport:
    """What one optimiser step did, for progress displays and the store."""

    step: int
    total_steps: int
    loss: float
    tokens: int
    seconds: float


@dataclass(frozen=True)
class Encoded:
    """A tokenized pair: the prompt's labels are masked so only the target is learned."""

    input_ids: list[int]
    labels: list[int]
    strength: float


def encode_pair(tokenizer: PreTrainedTokenizerBase, pair: Pair, *, max_length: int) -> Encoded:
    """Chat-template the pair; loss falls only on the reply and its end-of-turn token."""
    prompt = prompt_ids(tokenizer, transform_messages(pair.input))
    reply = reply_ids(tokenizer, pair.target)
    if len(prompt) >= max_length:
        raise ValueError(
            f"input of {len(prompt)} prompt tokens leaves no room for a target within "
            f"max_length={max_length}"
        )
    input_ids = (prompt + reply)[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt) + reply)[:max_length]
    return Encoded(input_ids=input_ids, labels=labels, strength=pair.strength)


def collate(batch: Sequence[Encoded], *, pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch into ``input_ids``, ``attention_mask`` and ``labels`` tensors."""
    width = max(len(item.input_ids) for item in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, item in enumerate(batch):
        length = len(item.input_ids)
        ids[row, :length] = torch.tensor(item.input_ids)
        labels[row, :length] = torch.tensor(item.labels)
        mask[row, :length] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def labelled_logits(
    model: PeftModel | PreTrainedModel, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``(N, vocab)`` at the N labelled positions, and their labels ``(N,)``.

    The head is the costliest single matmul of a small model (SmolLM2: 576 x 49,152), and
    about 60 % of positions are prompt tokens with no label, so projecting only the
    labelled positions cuts a CPU training step by about 30 %. Row order is the batch's
    reading order, so a teacher's per-reply logits, concatenated, line up with the rows.
    """
    causal_lm = (
        cast(PreTrainedModel, model.get_base_model()) if isinstance(model, PeftModel) else model
    )
    hidden = causal_lm.get_decoder()(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
    ).last_hidden_state
    labels = batch["labels"][:, 1:]
    labelled = labels != IGNORE_INDEX
    logits = causal_lm.get_output_embeddings()(hidden[:, :-1][labelled])
    return logits.float(), labels[labelled]


def target_token_loss(model: PeftModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy over target tokens."""
    logits, labels = labelled_logits(model, batch)
    return torch.nn.functional.cross_entropy(logits, labels)


def strength_batches(
    examples: Sequence[Encoded], *, batch_size: int, seed: int
) -> Iterator[list[Encoded]]:
    """Endless shuffled batches, each drawn from pairs of a single strength."""
    groups: dict[float, list[Encoded]] = {}
    for example in examples:
        groups.setdefault(example.strength, []).append(example)
    rng = random.Random(seed)
    while True:
        epoch: list[list[Encoded]] = []
        for members in groups.values():
            shuffled = rng.sample(members, len(members))
            epoch.extend(shuffled[i : i + batch_size] for i in range(0, len(shuffled), batch_size))
        rng.shuffle(epoch)
        yield from epoch


def warmup_linear_decay(
    optimizer: torch.optim.Optimizer, *, steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Five warm-up steps, then a linear decay to zero at ``steps``."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / 5) * (1 - step / steps)
    )


def train_lora(
    model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[Pair],
    args: FinetuneArgs,
    *,
    on_step: Callable[[StepReport], None] | None = None,
) -> list[float]:
    """Fine-tune the active adapter of ``model`` on ``pairs``; returns the loss per step."""
    if not pairs:
        raise ValueError("no training pairs")
    torch.manual_seed(args.seed)
    device = next(model.parameters()).device
    adapter = model.active_adapter
    encoded = [encode_pair(tokenizer, pair, max_length=args.max_length) for pair in pairs]
    batches = strength_batches(encoded, batch_size=args.batch_size, seed=args.seed)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=args.learning_rate, weight_decay=args.weight_decay)
    schedule = warmup_linear_decay(optimizer, steps=args.steps)
    model.train()
    losses: list[float] = []
    try:
        for step in range(1, args.steps + 1):
            started = time.perf_counter()
            batch = next(batches)
            set_strength(model, adapter=adapter, strength=batch[0].strength)
            tensors = {
                k: v.to(device) for k, v in collate(batch, pad_id=tokenizer.pad_token_id).items()
            }
            with autocast(args.precision, device):
                loss = target_token_loss(model, tensors)
            torch.autograd.backward(loss)
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            if on_step is not None:
                on_step(
                    StepReport(
                        step=step,
                        total_steps=args.steps,
                        loss=losses[-1],
                        tokens=int(tensors["attention_mask"].sum()),
                        seconds=time.perf_counter() - started,
                    )
                )
    finally:
        set_strength(model, adapter=adapter, strength=1.0)
        model.eval()
    return losses
