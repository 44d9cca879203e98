"""Many LoRA adapters resident on one base model, each row of a batch using its own.

Every adapted linear layer keeps all resident adapters in two slot tables,
``A: (slots, rank, in)`` and ``B: (slots, out, rank)``, with each adapter's α/r scale
folded into B when it is loaded. Slot 0 is the zero adapter (the base model).

A batch is routed by giving each row up to K (slot, weight) pairs, where a weight is the
row's strength times its mix weight::

    y_b = W x_b + Σ_k w_bk · B[slot_bk] (A[slot_bk] x_b)

The routing is turned once per batch into segments, one per distinct adapter: the rows
that use it and their weights. Each layer then runs the base matmul for the whole batch
and two small matmuls per segment (the SGMV idea of Punica/S-LoRA in plain PyTorch), so
each adapter's factors are read once per step, rows with different adapters, strengths
and mixes share every matmul of the base model, and no request switches an adapter.

A captured CUDA graph cannot hold a data-dependent loop, so the static decoder routes
densely instead: every slot's factors as one ``(slots·rank, in)`` matrix, each row's
weights spread over its slots' rank columns::

    y = W x + B_all ((A_all x) ⊙ scale)

Two fixed-shape matmuls per layer, whatever the mix; it reads every resident slot's
factors (small next to W) instead of the used ones only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedModel

from kizuna.model.quantize import load_lora_tensors

# PEFT names a layer's factors "<module path>.lora_A.weight"; its module path starts
# with "base_model.model." before the wrapped model's own path.
PEFT_PREFIX = "base_model.model."


@dataclass(frozen=True)
class Segment:
    """The rows of a batch that use one adapter slot, and each row's weight for it."""

    slot: int
    rows: torch.Tensor  # (n,) row indices
    weights: torch.Tensor  # (n,)
    all_rows: bool  # the segment is the whole batch in order: no gather or scatter needed


@dataclass(frozen=True)
class Routing:
    """Which adapters each row uses, as one segment per distinct adapter."""

    segments: tuple[Segment, ...]

    @classmethod
    def from_rows(cls, rows: list[dict[int, float]], *, device: torch.device) -> Routing:
        """Segments from each row's {slot: weight}; slot 0 and zero weights are skipped."""
        by_slot: dict[int, tuple[list[int], list[float]]] = {}
        for row, pairs in enumerate(rows):
            for slot, weight in pairs.items():
                if slot != 0 and weight != 0.0:
                    indices, weights = by_slot.setdefault(slot, ([], []))
                    indices.append(row)
                    weights.append(weight)
        segments = tuple(
            Segment(
                slot=slot,
                rows=torch.tensor(indices, device=device),
                weights=torch.tensor(weights, device=device),
                all_rows=indices == list(range(len(rows))),
            )
            for slot, (indices, weights) in by_slot.items()
        )
        return cls(segments=segments)


@dataclass(frozen=True)
class DenseRouting:
    """Every row's weight for every adapter slot but the zero one, repeated over the slot's
    rank columns: ``scale`` is ``(batch, 1, (slots - 1) · rank)``, filled in place so a
    captured graph keeps reading the same memory."""

    scale: torch.Tensor
    rank: int

    @classmethod
    def allocate(
        cls, batch: int, *, slots: int, rank: int, dtype: torch.dtype, device: torch.device
    ) -> DenseRouting:
        """A zero routing (every row on the base model) for ``batch`` rows."""
        scale = torch.zeros(batch, 1, (slots - 1) * rank, dtype=dtype, device=device)
        return cls(scale=scale, rank=rank)

    def fill(self, rows: list[dict[int, float]]) -> None:
        """Route row ``i`` by ``rows[i]`` ({slot: weight}); rows past the list get none."""
        weights = torch.zeros(self.scale.shape[0], self.scale.shape[-1] // self.rank)
        for row, pairs in enumerate(rows):
            for slot, weight in pairs.items():
                if slot != 0:
                    weights[row, slot - 1] = weight
        spread = weights.repeat_interleave(self.rank, dim=1)[:, None, :]
        self.scale.copy_(spread.to(self.scale.dtype), non_blocking=True)


class RoutingContext:
    """The routing of the batch being run, shared by every multi-LoRA layer of a model."""

    def __init__(self) -> None:
        self.current: Routing | DenseRouting | None = None


class MultiLoraLinear(nn.Module):
    """A frozen linear layer plus per-row low-rank deltas from resident adapters."""

    def __init__(self, base: nn.Linear, *, slots: int, rank: int, context: RoutingContext):
        super().__init__()
        self.base = base
        self.context = context
        # A 4/8-bit base (bitsandbytes) stores integer weights but computes in bf16.
        dtype = base.weight.dtype if base.weight.dtype.is_floating_point else torch.bfloat16
        device = base.weight.device
        a = torch.zeros(slots, rank, base.in_features, dtype=dtype, device=device)
        # B is (out, slots, rank) so that all slots but 0 view as one (out, slots·rank)
        # matrix for dense routing without a copy.
        b = torch.zeros(base.out_features, slots, rank, dtype=dtype, device=device)
        self.lora_a = nn.Parameter(a, requires_grad=False)
        self.lora_b = nn.Parameter(b, requires_grad=False)

    def set_slot(self, slot: int, a: torch.Tensor | None, b: torch.Tensor | None) -> None:
        """Write (or with None, clear) one adapter's factors; ranks below the table's pad."""
        self.lora_a.data[slot].zero_()
        self.lora_b.data[:, slot].zero_()
        if a is not None and b is not None:
            rank = a.shape[0]
            self.lora_a.data[slot, :rank] = a.to(self.lora_a.dtype)
            self.lora_b.data[:, slot, :rank] = b.to(self.lora_b.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Base output plus each row's weighted adapter deltas."""
        output: torch.Tensor = self.base(x)
        routing = self.context.current
        if routing is None:
            return output
        if isinstance(routing, DenseRouting):
            a_all = self.lora_a[1:].view(-1, self.lora_a.shape[-1])
            b_all = self.lora_b[:, 1:].view(self.lora_b.shape[0], -1)
            return output + ((x @ a_all.T) * routing.scale) @ b_all.T
        for segment in routing.segments:
            rows = x if segment.all_rows else x[segment.rows]
            weights = segment.weights.to(x.dtype)[:, None, None]
            delta = (rows @ self.lora_a[segment.slot].T) @ self.lora_b[:, segment.slot].T * weights
            if segment.all_rows:
                output = output + delta
            else:
                output = output.index_add(0, segment.rows, delta.to(output.dtype))
        return output


@dataclass(frozen=True)
class AdapterFactors:
    """One PEFT adapter read from disk: per module path, A and α/r-scaled B."""

    rank: int
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]]


def read_peft_adapter(directory: Path) -> AdapterFactors:
    """Read a PEFT LoRA directory (adapter_config.json + safetensors, fp32 or int8)."""
    config = json.loads((directory / "adapter_config.json").read_text())
    if config.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"{directory} is a {config['peft_type']} adapter, not LoRA")
    if config.get("use_rslora") or config.get("use_dora"):
        raise ValueError(f"{directory}: rsLoRA and DoRA adapters are not supported")
    rank, alpha = int(config["r"]), float(config["lora_alpha"])
    tensors = load_lora_tensors(directory)
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for key, a in tensors.items():
        if not key.endswith(".lora_A.weight"):
            continue
        module = key.removesuffix(".lora_A.weight").removeprefix(PEFT_PREFIX)
        b = tensors[key.replace(".lora_A.", ".lora_B.")]
        factors[module] = (a, b * (alpha / rank))
    if not factors:
        raise ValueError(f"{directory} holds no LoRA factors")
    return AdapterFactors(rank=rank, factors=factors)


def install_multi_lora(
    model: PreTrainedModel, *, slots: int, rank: int, context: RoutingContext
) -> dict[str, MultiLoraLinear]:
    """Wrap every linear layer but the LM head in place; returns them by module path."""
    head = model.get_output_embeddings()
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and module is not head
    ]
    layers: dict[str, MultiLoraLinear] = {}
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        layer = MultiLoraLinear(module, slots=slots, rank=rank, context=context)
        setattr(parent, child, layer)
        layers[name] = layer
    return layers
