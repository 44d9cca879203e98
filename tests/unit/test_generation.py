import math
from pathlib import Path

import pytest
import torch

from kizuna.model.base import load_base_model, load_tokenizer
from kizuna.model.generation import SamplingParams, generate, token_uncertainty
from kizuna.model.prompts import prompt_ids, transform_messages

CPU = torch.device("cpu")


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    return token_uncertainty(logits)[0]


def token_margin(logits: torch.Tensor) -> torch.Tensor:
    return token_uncertainty(logits)[1]


def test_entropy_of_uniform_and_certain_distributions() -> None:
    vocab = 50
    assert token_entropy(torch.zeros(vocab)).item() == pytest.approx(math.log(vocab))
    certain = torch.full((vocab,), -1e4)
    certain[3] = 0
    assert token_entropy(certain).item() == pytest.approx(0.0, abs=1e-6)


def test_margin_is_the_gap_between_the_two_likeliest_tokens() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2], [0.4, 0.4, 0.2]]))
    torch.testing.assert_close(token_margin(logits), torch.tensor([0.2, 0.0]))


def test_entropy_matches_the_definition_on_random_logits() -> None:
    logits = torch.randn(4, 7, generator=torch.Generator().manual_seed(0))
    probs = logits.softmax(-1)
    expected = -(probs * probs.log()).sum(-1)
    torch.testing.assert_close(token_entropy(logits), expected)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path):
    return load_base_model(str(tiny_model_dir), device=CPU), load_tokenizer(str(tiny_model_dir))


def test_reported_entropies_equal_a_teacher_forced_forward_pass(tiny) -> None:
    model, tokenizer = tiny
    prompt = prompt_ids(tokenizer, transform_messages("The train leaves at eight."))
    result = generate(model, tokenizer, prompt, SamplingParams(max_new_tokens=12))
    assert len(result.token_entropies) == len(result.token_ids) > 0
    with torch.no_grad():
        logits = model(torch.tensor([prompt + result.token_ids])).logits[0]
    # Position i predicts token i+1: the entropies of the generated tokens' distributions.
    reference = token_entropy(logits[len(prompt) - 1 : -1])
    torch.testing.assert_close(
        torch.tensor(result.token_entropies), reference, atol=1e-4, rtol=1e-4
    )
    assert result.entropy_max == max(result.token_entropies)
    assert result.entropy_mean == pytest.approx(sum(result.token_entropies) / len(result.token_ids))
    top2 = torch.softmax(logits[len(prompt) - 1 : -1], dim=-1).topk(2).values
    torch.testing.assert_close(
        torch.tensor(result.token_margins), top2[:, 0] - top2[:, 1], atol=1e-4, rtol=1e-4
    )


def test_greedy_is_deterministic_and_seeded_sampling_repeats(tiny) -> None:
    model, tokenizer = tiny
    prompt = prompt_ids(tokenizer, transform_messages("Thank you for the gift."))
    greedy = SamplingParams(max_new_tokens=10)
    assert generate(model, tokenizer, prompt, greedy) == generate(model, tokenizer, prompt, greedy)
    sampled = SamplingParams(max_new_tokens=10, temperature=1.5, top_p=0.95, seed=7)
    first = generate(model, tokenizer, prompt, sampled)
    assert first == generate(model, tokenizer, prompt, sampled)
    others = {
        tuple(
            generate(
                model,
                tokenizer,
                prompt,
                SamplingParams(max_new_tokens=10, temperature=1.5, seed=seed),
            ).token_ids
        )
        for seed in range(5)
    }
    assert len(others) > 1


def test_generation_length_bounds(tiny) -> None:
    model, tokenizer = tiny
    prompt = prompt_ids(tokenizer, transform_messages("hello"))
    assert len(generate(model, tokenizer, prompt, SamplingParams(max_new_tokens=3)).token_ids) <= 3
    fixed = SamplingParams(max_new_tokens=20, min_new_tokens=20)
    assert len(generate(model, tokenizer, prompt, fixed).token_ids) == 20


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_new_tokens": 0},
        {"min_new_tokens": 9, "max_new_tokens": 8},
        {"temperature": -1.0},
        {"top_p": 0.0},
        {"top_p": 1.5},
    ],
)
def test_bad_sampling_params_are_refused(kwargs) -> None:
    with pytest.raises(ValueError):
        SamplingParams(**kwargs)


def test_prompts_use_the_chat_template_with_kizunas_system_prompt(tiny) -> None:
    _, tokenizer = tiny
    text = tokenizer.decode(prompt_ids(tokenizer, transform_messages("Hi there")))
    assert text.startswith("<|im_start|>system\nYou are a companion character.<|im_end|>")
    assert text.endswith("Hi there<|im_end|>\n<|im_start|>assistant\n")
