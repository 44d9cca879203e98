"""The captured-graph decode on CUDA against the dynamic path, on the same weights.

Skipped without a CUDA device (CI has none). It needs no fixture from ``tests/conftest.py``
so that a GPU machine without the store and Ray installed can run it alone:
``pytest --noconftest -p no:cacheprovider tests/gpu``.
"""

import copy
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, Qwen2Config

from kizuna.model.engine import Engine, EngineRequest
from kizuna.model.generation import SamplingParams
from kizuna.model.lora import LoraShape, new_adapter

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
VOCAB = 512
CONFIG = Qwen2Config(
    hidden_size=256,
    intermediate_size=512,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=VOCAB,
)


def _tokenizer() -> PreTrainedTokenizerFast:
    vocab = {f"t{i}": i for i in range(VOCAB)}
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t0")),
        eos_token="t1",
        pad_token="t2",
    )


def _adapter(base: torch.nn.Module, directory: Path, seed: int) -> Path:
    model = new_adapter(copy.deepcopy(base), LoraShape(rank=8, dropout=0.0), seed=seed)
    generator = torch.Generator().manual_seed(seed)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            parameter.data = (torch.randn(parameter.shape, generator=generator) * 0.2).to(
                parameter.device
            )
    model.save_pretrained(directory)
    return directory


def test_graph_replays_decode_like_the_dynamic_cache(tmp_path: Path) -> None:
    torch.manual_seed(0)
    with torch.device("cuda"):
        base = AutoModelForCausalLM.from_config(CONFIG, dtype=torch.float32).eval()
    adapters = {f"a{i}": _adapter(base, tmp_path / f"a{i}", seed=i) for i in range(3)}
    tokenizer = _tokenizer()
    graphs = Engine(copy.deepcopy(base), tokenizer, max_adapters=4, max_rank=8)
    dynamic = Engine(base, tokenizer, max_adapters=4, max_rank=8, static_decode=False)
    for engine in (graphs, dynamic):
        for name, directory in adapters.items():
            engine.load_adapter(name, directory)
    generator = torch.Generator().manual_seed(1)
    params = SamplingParams(max_new_tokens=12, min_new_tokens=12)
    rows = [
        ({"a0": 1.0}, 1.0),
        ({"a1": 1.0}, 0.5),
        ({"a0": 0.7, "a2": 0.3}, 0.9),
        ({}, 1.0),
        ({"a2": 1.0}, 0.0),
    ]
    requests = [
        EngineRequest(
            prompt=torch.randint(3, VOCAB, (3 + 4 * i,), generator=generator).tolist(),
            mix=mix,
            strength=strength,
            params=params,
        )
        for i, (mix, strength) in enumerate(rows)
    ]
    # Batch 1, 5 rows in an 8-row bucket, 8 rows, then batch 1 again on its captured graph.
    for batch in (requests[:1], requests, requests + requests[:3], requests[:1]):
        for ours, reference in zip(graphs.generate(batch), dynamic.generate(batch), strict=True):
            assert ours.token_ids == reference.token_ids
            torch.testing.assert_close(
                torch.tensor(ours.token_entropies),
                torch.tensor(reference.token_entropies),
                atol=1e-3,
                rtol=1e-3,
            )
    assert graphs.static_decoder is not None
    assert graphs.static_decoder.captured_graphs == 2  # buckets of 1 and 8 rows
