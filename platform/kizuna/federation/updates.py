"""LoRA updates as they travel: a fixed tensor order, validation and L2 clipping.

Both sides use these: a device clips what it sends; the server checks everything it can
see (every update in ``robust`` mode, the aggregate in ``secure`` mode) before it is used.

Which factors travel (``Factors``): averaging A and B separately is not averaging the
updates, mean(Bᵢ)·mean(Aᵢ) ≠ mean(BᵢAᵢ). With A frozen and shared (FFA-LoRA, Sun et al.,
ICLR 2024) a device's change ΔW = s·ΔBᵢ·A is linear in what it sends, so the mean of the
ΔBᵢ gives exactly the mean change, from sums alone (SecAgg+), at half the bytes and half
the dimensions DP noise lands on. ``both`` keeps the old inexact rule for comparison.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from flwr.supercore.differential_privacy import clip_inputs_inplace, get_norm
from numpy.typing import NDArray
from safetensors.numpy import save_file

from kizuna.federation.config import Factors
from kizuna.model.quantize import PEFT_WEIGHTS_FILE

Arrays = list[NDArray[np.float32]]


def trains(name: str, factors: Factors) -> bool:
    """Whether devices train and send the tensor (or parameter) called ``name``."""
    return factors == "both" or "lora_B" in name


@dataclass(frozen=True)
class Rejection:
    """An update that was not aggregated, and why."""

    device: str
    reason: str


@dataclass(frozen=True)
class AdapterLayout:
    """The tensor names, shapes and dtype of an adapter: what every update must match."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, tensors: Mapping[str, torch.Tensor]) -> AdapterLayout:
        """The layout of a PEFT state dict, in sorted-name order."""
        names = tuple(sorted(tensors))
        return cls(names=names, shapes=tuple(tuple(tensors[n].shape) for n in names))

    def sent(self, factors: Factors) -> AdapterLayout:
        """The part of the layout that devices train and send."""
        keep = [i for i, name in enumerate(self.names) if trains(name, factors)]
        return AdapterLayout(
            names=tuple(self.names[i] for i in keep), shapes=tuple(self.shapes[i] for i in keep)
        )

    def arrays(self, tensors: Mapping[str, torch.Tensor]) -> Arrays:
        """The tensors as float32 arrays in layout order."""
        return [tensors[name].detach().float().cpu().numpy().copy() for name in self.names]

    def problem(
        self, arrays: Sequence[NDArray[np.generic]], *, max_norm: float | None
    ) -> str | None:
        """Why ``arrays`` cannot be used as an update of this adapter, or None."""
        if len(arrays) != len(self.names):
            return f"expected {len(self.names)} tensors, got {len(arrays)}"
        for name, shape, array in zip(self.names, self.shapes, arrays, strict=True):
            if not np.issubdtype(array.dtype, np.floating):
                return f"{name}: dtype {array.dtype} is not floating point"
            if tuple(array.shape) != shape:
                return f"{name}: shape {tuple(array.shape)} does not match {shape}"
            if not np.isfinite(array).all():
                return f"{name}: holds NaN or Inf"
        if max_norm is not None:
            norm = l2_norm(arrays)
            if norm > max_norm:
                return f"L2 norm {norm:.4g} exceeds the bound {max_norm:.4g}"
        return None


def save_arrays(path: Path, names: Sequence[str], arrays: Sequence[NDArray[np.floating]]) -> Path:
    """Write ``arrays`` under ``names`` as one safetensors file (float32)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {
        name: np.ascontiguousarray(array, dtype=np.float32)
        for name, array in zip(names, arrays, strict=True)
    }
    save_file(tensors, str(path))
    return path


def save_adapter(
    directory: Path, *, adapter_config: str, names: Sequence[str], arrays: Arrays
) -> Path:
    """A PEFT adapter directory: ``adapter_config.json`` and the LoRA weights."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "adapter_config.json").write_text(adapter_config, encoding="utf-8")
    save_arrays(directory / PEFT_WEIGHTS_FILE, names, arrays)
    return directory


def l2_norm(arrays: Sequence[NDArray[np.generic]]) -> float:
    """The L2 norm of all arrays flattened together."""
    return get_norm(list(arrays))


def clipped(arrays: Sequence[NDArray[np.floating]], max_norm: float) -> Arrays:
    """A copy of ``arrays`` scaled down to L2 norm ``max_norm`` if it is longer."""
    copies = [np.array(array, dtype=np.float32) for array in arrays]
    if l2_norm(copies) > 0:
        clip_inputs_inplace(copies, max_norm)
    return copies


def difference(
    after: Sequence[NDArray[np.floating]], before: Sequence[NDArray[np.floating]]
) -> Arrays:
    """``after - before`` tensor by tensor, float32."""
    return [np.subtract(a, b, dtype=np.float32) for a, b in zip(after, before, strict=True)]
