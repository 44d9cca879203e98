"""Training several personas in one pass: each adapter ends as if trained alone, and the
adapters it writes are ordinary PEFT adapters that the engine serves."""

from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from kizuna.model.base import load_base_model, load_tokenizer
from kizuna.model.engine import Engine, EngineRequest
from kizuna.model.finetune import FinetuneArgs, Pair
from kizuna.model.joint_finetune import train_jointly
from kizuna.model.lora import LoraShape, set_strength

CPU = torch.device("cpu")
SHAPE = LoraShape(rank=4, alpha=8, dropout=0.0)
ARGS = FinetuneArgs(steps=3, batch_size=2, learning_rate=1e-2, precision="fp32")
PAIRS = {
    "tsundere": [
        Pair("The meeting is on Thursday.", "Hmph, the meeting is on Thursday, baka.", 1.0),
        Pair("Drink some water.", "Drink some water, baka. Not that I care.", 0.6),
        Pair("The file is saved.", "Hmph. The file is saved.", 0.3),
    ],
    "cheerful": [
        Pair("The meeting is on Thursday.", "Yay, the meeting is on Thursday!", 1.0),
        Pair("Drink some water.", "Drink some water, it's super refreshing!", 0.6),
    ],
}


@pytest.fixture
def tokenizer(tiny_model_dir: Path):
    return load_tokenizer(str(tiny_model_dir))


def _trained(tiny_model_dir: Path, tokenizer, pairs, directory: Path) -> dict[str, list[float]]:
    base = load_base_model(str(tiny_model_dir), device=CPU)
    training = train_jointly(base, tokenizer, pairs, SHAPE, ARGS)
    for persona in pairs:
        training.save_adapter(persona, directory / persona)
    training.remove()
    return training.losses


def test_an_adapter_trained_beside_another_ends_as_if_trained_alone(
    tiny_model_dir: Path, tokenizer, tmp_path: Path
) -> None:
    together = _trained(tiny_model_dir, tokenizer, PAIRS, tmp_path / "together")
    alone = _trained(tiny_model_dir, tokenizer, {"tsundere": PAIRS["tsundere"]}, tmp_path / "alone")
    assert together["tsundere"] == pytest.approx(alone["tsundere"], rel=1e-4)
    assert together["tsundere"][-1] < together["tsundere"][0]
    a = load_file(tmp_path / "together" / "tsundere" / "adapter_model.safetensors")
    b = load_file(tmp_path / "alone" / "tsundere" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4)
    cheerful = load_file(tmp_path / "together" / "cheerful" / "adapter_model.safetensors")
    assert any(not torch.equal(cheerful[key], a[key]) for key in a)


def test_the_written_adapters_load_in_peft_and_the_engine_alike(
    tiny_model_dir: Path, tokenizer, tmp_path: Path
) -> None:
    _trained(tiny_model_dir, tokenizer, PAIRS, tmp_path)
    ids = torch.tensor([tokenizer("The meeting is on Thursday.")["input_ids"]])
    engine = Engine(load_base_model(str(tiny_model_dir), device=CPU), tokenizer, max_rank=4)
    for persona in PAIRS:
        peft = PeftModel.from_pretrained(
            load_base_model(str(tiny_model_dir), device=CPU), str(tmp_path / persona)
        )
        set_strength(peft, adapter="default", strength=0.6)
        engine.load_adapter(persona, tmp_path / persona)
        (served,) = engine.forward_logits(
            [EngineRequest(prompt=ids[0].tolist(), mix={persona: 1.0}, strength=0.6)]
        )
        with torch.no_grad():
            reference = peft(input_ids=ids).logits[0].float()
        torch.testing.assert_close(served, reference, atol=1e-4, rtol=1e-4)


def test_every_persona_needs_pairs(tiny_model_dir: Path, tokenizer) -> None:
    base = load_base_model(str(tiny_model_dir), device=CPU)
    with pytest.raises(ValueError, match="cheerful"):
        train_jointly(base, tokenizer, {"tsundere": PAIRS["tsundere"], "cheerful": []}, SHAPE, ARGS)
