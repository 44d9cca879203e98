from pathlib import Path

import pytest
import torch
from peft.tuners.lora import LoraLayer

from kizuna.model.base import load_base_model, load_tokenizer
from kizuna.model.finetune import (
    IGNORE_INDEX,
    FinetuneArgs,
    Pair,
    collate,
    encode_pair,
    strength_batches,
    target_token_loss,
    train_lora,
)
from kizuna.model.lora import LoraShape, load_adapter, new_adapter, set_strength

CPU = torch.device("cpu")
PAIRS = [
    Pair("The meeting is on Thursday.", "Hmph, the meeting is on Thursday, baka.", 1.0),
    Pair("Drink some water.", "Drink some water, baka. Not that I care.", 1.0),
    Pair("The file is saved.", "Hmph. The file is saved.", 0.3),
    Pair("Get some rest.", "Get some rest, baka. Hmph.", 0.6),
]


@pytest.fixture
def tokenizer(tiny_model_dir: Path):
    return load_tokenizer(str(tiny_model_dir))


@pytest.fixture
def base(tiny_model_dir: Path):
    return load_base_model(str(tiny_model_dir), device=CPU)


def test_encode_pair_learns_only_the_reply_and_its_end_token(tokenizer) -> None:
    encoded = encode_pair(tokenizer, PAIRS[0], max_length=512)
    pairs = zip(encoded.input_ids, encoded.labels, strict=True)
    learned = [token for token, label in pairs if label != IGNORE_INDEX]
    assert tokenizer.decode(learned) == PAIRS[0].target + tokenizer.eos_token
    first_learned = encoded.labels.index(learned[0])
    assert tokenizer.decode(encoded.input_ids[:first_learned]).endswith("<|im_start|>assistant\n")


def test_encode_pair_truncates_the_target_but_never_all_of_it(tokenizer) -> None:
    prompt_length = encode_pair(tokenizer, PAIRS[0], max_length=512).labels.count(IGNORE_INDEX)
    encoded = encode_pair(tokenizer, PAIRS[0], max_length=prompt_length + 2)
    assert len(encoded.input_ids) == len(encoded.labels) == prompt_length + 2
    with pytest.raises(ValueError, match="no room for a target"):
        encode_pair(tokenizer, PAIRS[0], max_length=prompt_length)


def test_collate_right_pads_and_masks(tokenizer) -> None:
    batch = [encode_pair(tokenizer, pair, max_length=512) for pair in PAIRS[:2]]
    tensors = collate(batch, pad_id=tokenizer.pad_token_id)
    shortest = min(len(item.input_ids) for item in batch)
    row = min(range(2), key=lambda i: len(batch[i].input_ids))
    assert tensors["attention_mask"][row].sum() == shortest
    assert (tensors["labels"][row, shortest:] == IGNORE_INDEX).all()


def test_each_batch_holds_a_single_strength(tokenizer) -> None:
    encoded = [encode_pair(tokenizer, pair, max_length=256) for pair in PAIRS * 5]
    batches = strength_batches(encoded, batch_size=3, seed=0)
    for _ in range(20):
        assert len({item.strength for item in next(batches)}) == 1


def test_target_token_loss_equals_the_models_own_loss(base, tokenizer) -> None:
    model = new_adapter(base, LoraShape(rank=4, dropout=0.0))
    encoded = [encode_pair(tokenizer, p, max_length=256) for p in PAIRS]
    batch = collate(encoded, pad_id=tokenizer.pad_token_id)
    with torch.no_grad():
        reference = model(**batch).loss
        torch.testing.assert_close(target_token_loss(model, batch), reference)


def test_strength_zero_is_the_base_model_and_scales_the_delta_linearly(base, tokenizer) -> None:
    ids = torch.tensor([encode_pair(tokenizer, PAIRS[0], max_length=256).input_ids])
    with torch.no_grad():
        base_logits = base(ids).logits
    model = new_adapter(base, LoraShape(rank=4, dropout=0.0))
    for module in model.modules():  # a fresh adapter is a no-op (B = 0); make it act
        if isinstance(module, LoraLayer):
            torch.nn.init.normal_(module.lora_B["default"].weight, std=0.5)
    layer = next(m for m in model.modules() if isinstance(m, LoraLayer))
    x = torch.randn(3, layer.in_features)
    with torch.no_grad():
        set_strength(model, adapter="default", strength=0.0)
        torch.testing.assert_close(model(ids).logits, base_logits)
        base_out = layer(x)
        set_strength(model, adapter="default", strength=0.5)
        half = layer(x) - base_out
        set_strength(model, adapter="default", strength=1.0)
        full = layer(x) - base_out
        assert not torch.allclose(model(ids).logits, base_logits)
    torch.testing.assert_close(full, 2 * half)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        set_strength(model, adapter="default", strength=1.2)


def test_training_lowers_the_loss_and_the_saved_adapter_reloads(
    base, tokenizer, tmp_path: Path
) -> None:
    model = new_adapter(base, LoraShape(rank=8))
    reports = []
    losses = train_lora(
        model,
        tokenizer,
        PAIRS,
        FinetuneArgs(steps=30, batch_size=2, learning_rate=1e-2),
        on_step=reports.append,
    )
    assert len(losses) == len(reports) == 30
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5
    assert all(report.tokens > 0 for report in reports)
    model.save_pretrained(tmp_path, safe_serialization=True)
    assert (tmp_path / "adapter_model.safetensors").is_file()
    ids = torch.tensor([encode_pair(tokenizer, PAIRS[0], max_length=256).input_ids])
    with torch.no_grad():
        trained = model(ids).logits
        reloaded = load_adapter(model.unload(), tmp_path, name="tsundere")(ids).logits
    torch.testing.assert_close(reloaded, trained)


def test_training_is_reproducible_for_a_seed(tiny_model_dir: Path, tokenizer) -> None:
    runs = []
    for _ in range(2):
        model = new_adapter(load_base_model(str(tiny_model_dir), device=CPU), LoraShape(rank=4))
        runs.append(train_lora(model, tokenizer, PAIRS, FinetuneArgs(steps=4, batch_size=2)))
    assert runs[0] == runs[1]


def test_training_needs_pairs(base, tokenizer) -> None:
    with pytest.raises(ValueError, match="no training pairs"):
        train_lora(new_adapter(base, LoraShape()), tokenizer, [], FinetuneArgs(steps=1))
