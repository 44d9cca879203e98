"""int8 variants: adapter files the engine reads back, and an int8 base on CPU."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kizuna.model.base import load_base_model, load_tokenizer
from kizuna.model.engine import Engine, EngineRequest
from kizuna.model.multi_lora import read_peft_adapter
from kizuna.model.prompts import prompt_ids, transform_messages
from kizuna.model.quantize import (
    INT8_ADAPTER_FILE,
    bitsandbytes_config,
    quantize_adapter_int8,
    quantize_base_int8,
    weight_bytes,
)
from support import random_adapter

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def adapter(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_adapter(tiny_model_dir, tmp_path_factory.mktemp("a") / "fp32", seed=3, rank=8)


def _logits(engine: Engine, name: str) -> torch.Tensor:
    prompt = prompt_ids(engine.tokenizer, transform_messages("The library closes at nine."))
    (logits,) = engine.forward_logits([EngineRequest(prompt=prompt, mix={name: 1.0})])
    return logits


def test_int8_adapter_is_a_quarter_of_the_size_and_reads_back_close(
    adapter: Path, tmp_path: Path
) -> None:
    int8_dir = quantize_adapter_int8(adapter, tmp_path / "int8")
    assert (int8_dir / INT8_ADAPTER_FILE).is_file() and not (adapter / INT8_ADAPTER_FILE).exists()
    # Tensor bytes (the tiny model's file headers would dominate its file sizes).
    fp32 = load_file(str(adapter / "adapter_model.safetensors"))
    int8 = load_file(str(int8_dir / INT8_ADAPTER_FILE))
    size = sum(t.numel() * t.element_size() for t in int8.values())
    assert size < 0.3 * sum(t.numel() * t.element_size() for t in fp32.values())
    full, small = read_peft_adapter(adapter), read_peft_adapter(int8_dir)
    assert full.factors.keys() == small.factors.keys()
    for module, (a, b) in full.factors.items():
        a8, b8 = small.factors[module]
        # Symmetric int8: each entry is off by at most half a step of its slice's scale.
        assert torch.allclose(a, a8, atol=float(a.abs().max()) / 254 + 1e-7), module
        assert torch.allclose(b, b8, atol=float(b.abs().max()) / 254 + 1e-7), module


def test_engine_serves_the_int8_adapter_nearly_as_the_full_one(
    tiny_model_dir: Path, adapter: Path, tmp_path: Path
) -> None:
    tokenizer = load_tokenizer(str(tiny_model_dir))
    engine = Engine(load_base_model(str(tiny_model_dir), device=CPU), tokenizer, max_adapters=2)
    engine.load_adapter("full", adapter)
    engine.load_adapter("int8", quantize_adapter_int8(adapter, tmp_path / "int8"))
    full, int8 = _logits(engine, "full"), _logits(engine, "int8")
    base = engine.forward_logits([EngineRequest(prompt=[1, 2, 3])])
    assert base  # the engine still serves rows without an adapter
    assert (full - int8).abs().max() < 0.05 * full.abs().max()
    assert torch.equal(full.argmax(-1), int8.argmax(-1))


def test_int8_base_on_cpu_is_smaller_and_stays_close(tiny_model_dir: Path, adapter: Path) -> None:
    tokenizer = load_tokenizer(str(tiny_model_dir))
    reference = Engine(load_base_model(str(tiny_model_dir), device=CPU), tokenizer, max_adapters=1)
    quantized = Engine(load_base_model(str(tiny_model_dir), device=CPU), tokenizer, max_adapters=1)
    fp32_bytes = weight_bytes(quantized.model)
    quantize_base_int8(quantized.model)
    assert weight_bytes(quantized.model) < fp32_bytes
    for engine in (reference, quantized):
        engine.load_adapter("a", adapter)
    expected, actual = _logits(reference, "a"), _logits(quantized, "a")
    # Dynamic int8 also quantizes activations, per tensor; the tiny random model (nearly
    # tied logits, large weights) is a worst case, so this checks closeness, not argmax.
    correlation = torch.corrcoef(torch.stack([expected.flatten(), actual.flatten()]))[0, 1]
    assert correlation > 0.97
    assert (expected - actual).abs().mean() < 0.2 * expected.abs().mean()


def test_bitsandbytes_needs_cuda_and_says_so() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(RuntimeError, match="needs a CUDA device"):
        bitsandbytes_config("bnb-4bit")
    with pytest.raises(ValueError, match="not a bitsandbytes"):
        bitsandbytes_config("int8")
