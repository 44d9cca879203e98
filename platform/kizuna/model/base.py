"""Loading a base causal LM and its tokenizer through the ordinary ``from_pretrained`` path.

Any Hugging Face id or local directory works; the embedded default is just a local
directory that ``kizuna bootstrap`` wrote.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from kizuna.model.quantize import Quantization, bitsandbytes_config

DeviceChoice = Literal["auto", "cpu", "cuda"]


class BaseModelMissingError(FileNotFoundError):
    """The configured base model is a local path that does not exist yet."""


def resolve_device(choice: DeviceChoice) -> torch.device:
    """The torch device for a settings choice; asking for CUDA without one is an error."""
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for, but no CUDA device is visible")
    return torch.device(choice)


def _check_local(name_or_path: str) -> None:
    path = Path(name_or_path)
    looks_local = path.is_absolute() or name_or_path.startswith(".")
    if looks_local and not (path / "config.json").is_file():
        raise BaseModelMissingError(
            f"base model {name_or_path} not found; run `kizuna bootstrap` to build the embedded "
            "model, or set KIZUNA_BASE_MODEL to a Hugging Face id or checkpoint directory"
        )


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """The base model's tokenizer, with a pad token (the EOS token when none is defined)."""
    _check_local(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base_model(
    name_or_path: str,
    *,
    device: torch.device,
    dtype: torch.dtype | None = None,
    quantization: Quantization = "none",
) -> PreTrainedModel:
    """The base model on ``device`` in eval mode (fp32 on CPU, bf16 on CUDA by default).

    bitsandbytes quantizations load quantized; ``int8`` (CPU) is applied after loading by
    :func:`kizuna.model.quantize.quantize_base_int8`, once adapters are wired in.
    """
    _check_local(name_or_path)
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    extra = {}
    if quantization.startswith("bnb-"):
        extra["quantization_config"] = bitsandbytes_config(quantization)
    model: PreTrainedModel = AutoModelForCausalLM.from_pretrained(
        name_or_path, dtype=dtype, device_map=str(device), **extra
    )
    model.eval()
    return model
