"""The multi-adapter engine against PEFT, the reference implementation of LoRA."""

from pathlib import Path

import pytest
import torch
from peft import PeftModel

from kizuna.model.base import load_base_model, load_tokenizer
from kizuna.model.engine import AdapterNotResidentError, Engine, EngineRequest
from kizuna.model.generation import SamplingParams, generate
from kizuna.model.lora import load_adapter, set_strength
from kizuna.model.prompts import prompt_ids, transform_messages
from kizuna.model.sampling import discourage_repeats
from support import random_adapter

CPU = torch.device("cpu")
# fp32 on CPU; the engine sums the same products in a different order than PEFT.
TOLERANCE = {"atol": 1e-4, "rtol": 1e-4}
TEXTS = ["I can help you.", "The meeting moved to Thursday, so you have more time.", "Thanks!"]


@pytest.fixture(scope="module")
def adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {
        "tsundere": random_adapter(tiny_model_dir, root / "tsundere", seed=1, rank=8),
        "airhead": random_adapter(tiny_model_dir, root / "airhead", seed=2, rank=4),
    }


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    return load_tokenizer(str(tiny_model_dir))


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path, tokenizer, adapters: dict[str, Path]) -> Engine:
    engine = Engine(
        load_base_model(str(tiny_model_dir), device=CPU), tokenizer, max_adapters=4, max_rank=8
    )
    for name, directory in adapters.items():
        engine.load_adapter(name, directory)
    return engine


@pytest.fixture(scope="module")
def static_engine(tiny_model_dir: Path, tokenizer, adapters: dict[str, Path]) -> Engine:
    """The CUDA decode path's buffers and dense routing, run eagerly on CPU."""
    engine = Engine(
        load_base_model(str(tiny_model_dir), device=CPU),
        tokenizer,
        max_adapters=4,
        max_rank=8,
        static_decode=True,
    )
    for name, directory in adapters.items():
        engine.load_adapter(name, directory)
    return engine


DECODERS = ["engine", "static_engine"]


def _peft_reference(
    tiny_model_dir: Path, adapters: dict[str, Path], mix: dict[str, float], strength: float
) -> PeftModel | torch.nn.Module:
    base = load_base_model(str(tiny_model_dir), device=CPU)
    if not mix:
        return base
    names = list(mix)
    model = load_adapter(base, adapters[names[0]], name=names[0])
    for name in names[1:]:
        model.load_adapter(str(adapters[name]), adapter_name=name)
    if len(names) == 1:
        set_strength(model, adapter=names[0], strength=strength)
        return model
    total = sum(mix.values())
    # PEFT's "cat" fusion: Σ w_i (α_i/r_i) B_i A_i x, the engine's definition of a mix.
    model.add_weighted_adapter(
        names,
        [strength * mix[n] / total for n in names],
        adapter_name="fused",
        combination_type="cat",
    )
    model.set_adapter("fused")
    return model


ROWS = [
    ({"tsundere": 1.0}, 1.0),
    ({"airhead": 1.0}, 0.5),
    ({"tsundere": 0.7, "airhead": 0.3}, 0.9),
    ({}, 1.0),
    ({"tsundere": 1.0}, 0.0),
]


def test_mixed_batch_logits_equal_each_row_alone_through_peft(
    engine, tokenizer, tiny_model_dir, adapters
) -> None:
    requests = [
        EngineRequest(
            prompt=prompt_ids(tokenizer, transform_messages(TEXTS[i % len(TEXTS)])),
            mix=mix,
            strength=strength,
        )
        for i, (mix, strength) in enumerate(ROWS)
    ]
    batched = engine.forward_logits(requests)
    for request, logits in zip(requests, batched, strict=True):
        reference = _peft_reference(tiny_model_dir, adapters, request.mix, request.strength)
        with torch.no_grad():
            expected = reference(torch.tensor([request.prompt])).logits[0]
        torch.testing.assert_close(logits, expected, **TOLERANCE)


def test_adapters_actually_change_the_output(engine, tokenizer) -> None:
    prompt = prompt_ids(tokenizer, transform_messages(TEXTS[0]))
    base, tsundere, zero = engine.forward_logits(
        [
            EngineRequest(prompt=prompt),
            EngineRequest(prompt=prompt, mix={"tsundere": 1}),
            EngineRequest(prompt=prompt, mix={"tsundere": 1}, strength=0.0),
        ]
    )
    assert (tsundere - base).abs().max() > 1e-2
    torch.testing.assert_close(zero, base)


@pytest.mark.parametrize("decoder", DECODERS)
def test_greedy_generation_matches_peft_generate_row_by_row(
    decoder, request, tokenizer, tiny_model_dir, adapters
) -> None:
    engine = request.getfixturevalue(decoder)
    # The reference (HF generate) knows no reply-only repeat controls: both off here.
    params = SamplingParams(
        max_new_tokens=8, min_new_tokens=8, no_repeat_ngram=0, repetition_penalty=1.0
    )
    requests = [
        EngineRequest(
            prompt=prompt_ids(tokenizer, transform_messages(TEXTS[i])),
            mix=mix,
            strength=strength,
            params=params,
        )
        for i, (mix, strength) in enumerate(ROWS[:3])
    ]
    for request, result in zip(requests, engine.generate(requests), strict=True):
        reference = generate(
            _peft_reference(tiny_model_dir, adapters, request.mix, request.strength),
            tokenizer,
            request.prompt,
            params,
        )
        assert result.token_ids == reference.token_ids
        torch.testing.assert_close(
            torch.tensor(result.token_entropies),
            torch.tensor(reference.token_entropies),
            **TOLERANCE,
        )
        torch.testing.assert_close(
            torch.tensor(result.token_margins),
            torch.tensor(reference.token_margins),
            **TOLERANCE,
        )


@pytest.mark.parametrize("decoder", DECODERS)
def test_a_row_gets_the_same_reply_alone_or_in_any_batch(decoder, request, tokenizer) -> None:
    engine = request.getfixturevalue(decoder)
    params = SamplingParams(max_new_tokens=6, temperature=0.9, top_p=0.9, seed=11)
    row = EngineRequest(
        prompt=prompt_ids(tokenizer, transform_messages(TEXTS[0])),
        mix={"airhead": 1.0},
        strength=0.7,
        params=params,
    )
    neighbour = EngineRequest(
        prompt=prompt_ids(tokenizer, transform_messages(TEXTS[1] * 3)),
        mix={"tsundere": 1.0},
        params=SamplingParams(max_new_tokens=9),
    )
    alone = engine.generate([row])[0]
    batched = engine.generate([neighbour, row, neighbour])[1]  # static: 3 rows of a 4-row bucket
    again = engine.generate([row])[0]  # a bucket used before: its cache starts over
    assert alone.token_ids == batched.token_ids == again.token_ids
    torch.testing.assert_close(
        torch.tensor(alone.token_entropies), torch.tensor(batched.token_entropies), **TOLERANCE
    )


@pytest.mark.parametrize("decoder", DECODERS)
def test_each_row_hears_its_tokens_step_by_step(decoder, request, tokenizer) -> None:
    engine = request.getfixturevalue(decoder)
    heard: list[tuple[int, int]] = []
    requests = [
        EngineRequest(
            prompt=prompt_ids(tokenizer, transform_messages(text)),
            mix=mix,
            params=SamplingParams(max_new_tokens=tokens, min_new_tokens=tokens),
            on_token=lambda token, row=row: heard.append((row, token.id)),
        )
        for row, (text, mix, tokens) in enumerate(
            [(TEXTS[0], {"tsundere": 1.0}, 3), (TEXTS[1], {"airhead": 1.0}, 6)]
        )
    ]
    short, long = engine.generate(requests)
    assert (len(short.token_ids), len(long.token_ids)) == (3, 6)
    # Interleaved as the rows decode together, not handed over at the end.
    expected = []
    for step, token in enumerate(long.token_ids):
        if step < len(short.token_ids):
            expected.append((0, short.token_ids[step]))
        expected.append((1, token))
    assert heard == expected


def test_least_recently_used_adapter_is_evicted(tiny_model_dir, tokenizer, adapters) -> None:
    engine = Engine(
        load_base_model(str(tiny_model_dir), device=CPU), tokenizer, max_adapters=2, max_rank=8
    )
    engine.load_adapter("a", adapters["tsundere"])
    engine.load_adapter("b", adapters["airhead"])
    prompt = prompt_ids(tokenizer, transform_messages("hi"))
    engine.forward_logits([EngineRequest(prompt=prompt, mix={"a": 1})])  # a is now most recent
    engine.load_adapter("c", adapters["airhead"])
    assert engine.resident == ["a", "c"]
    with pytest.raises(AdapterNotResidentError, match="'b' is not loaded"):
        engine.generate([EngineRequest(prompt=prompt, mix={"b": 1})])
    engine.unload_adapter("a")
    assert engine.resident == ["c"]


def test_adapters_above_the_rank_limit_are_refused(tiny_model_dir, tokenizer, adapters) -> None:
    engine = Engine(load_base_model(str(tiny_model_dir), device=CPU), tokenizer, max_rank=4)
    with pytest.raises(ValueError, match="rank 8 > 4"):
        engine.load_adapter("tsundere", adapters["tsundere"])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mix": {"a": -1.0}}, ">= 0"),
        ({"mix": {"a": 0.0}}, "sum to 0"),
        ({"strength": 1.5}, r"\[0, 1\]"),
        ({"prompt": []}, "empty"),
    ],
)
def test_bad_requests_are_refused(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        EngineRequest(**{"prompt": [1, 2], **kwargs})


def test_no_reply_repeats_an_ngram_and_the_prompt_may_be_copied() -> None:
    logits = torch.zeros(2, 10)
    replies = [[1, 2, 3, 1, 2], [4, 5]]
    params = [
        SamplingParams(no_repeat_ngram=3, repetition_penalty=1.0),
        SamplingParams(no_repeat_ngram=3, repetition_penalty=2.0),
    ]
    logits[1, 4], logits[1, 6] = 2.0, -1.0
    discourage_repeats(logits, replies, params)
    # Row 0 wrote "1 2 3" and ends with "1 2": 3 would repeat a 3-gram; nothing else is banned.
    assert logits[0, 3] == float("-inf") and torch.isfinite(logits[0, [0, 1, 2, 4]]).all()
    # Row 1: seen tokens penalised (positive logits divided, negative multiplied).
    assert logits[1, 4] == 1.0 and logits[1, 6] == -1.0 and logits[1, 5] == 0.0


@pytest.mark.parametrize("decoder", DECODERS)
def test_generation_never_repeats_a_reply_ngram(decoder, request, tokenizer) -> None:
    engine = request.getfixturevalue(decoder)
    prompt = prompt_ids(tokenizer, transform_messages(TEXTS[1]))
    free, guarded = (
        engine.generate(
            [
                EngineRequest(
                    prompt=prompt,
                    mix={"tsundere": 1.0},
                    params=SamplingParams(
                        max_new_tokens=40,
                        min_new_tokens=40,
                        no_repeat_ngram=n,
                        repetition_penalty=1.0,
                    ),
                )
            ]
        )[0].token_ids
        for n in (0, 2)
    )

    def bigrams(ids: list[int]) -> list[tuple[int, ...]]:
        return [tuple(ids[i : i + 2]) for i in range(len(ids) - 1)]

    # The tiny random model repeats itself without the guard, and never with it.
    assert len(set(bigrams(free))) < len(bigrams(free))
    assert len(set(bigrams(guarded))) == len(bigrams(guarded))


def test_presence_and_frequency_penalties_are_per_row_and_per_use() -> None:
    logits = torch.zeros(2, 6)
    plain = SamplingParams(no_repeat_ngram=0, repetition_penalty=1.0)
    penalised = SamplingParams(
        no_repeat_ngram=0, repetition_penalty=1.0, presence_penalty=0.5, frequency_penalty=0.25
    )
    discourage_repeats(logits, [[1, 1, 2], [1, 1, 2]], [penalised, plain])
    # presence once for any use, frequency for each: token 1 was used twice, token 2 once.
    assert logits[0].tolist() == [0.0, -1.0, -0.75, 0.0, 0.0, 0.0]
    assert logits[1].tolist() == [0.0] * 6


@pytest.mark.parametrize("decoder", DECODERS)
def test_a_stop_string_ends_the_reply_before_it(decoder, request, tokenizer) -> None:
    engine = request.getfixturevalue(decoder)
    prompt = prompt_ids(tokenizer, transform_messages(TEXTS[1]))

    def reply(stop: tuple[str, ...]):
        params = SamplingParams(max_new_tokens=24, min_new_tokens=24, stop=stop)
        return engine.generate(
            [EngineRequest(prompt=prompt, mix={"tsundere": 1.0}, params=params)]
        )[0]

    free = reply(())
    middle = len(free.text) // 2
    stop = free.text[middle : middle + 3]
    assert stop.strip(), free.text
    stopped = reply((stop, "never appears 🙅"))
    assert stopped.text == free.text[: free.text.find(stop)].strip()
    assert stop not in stopped.text and stopped.finish_reason == "stop"
    assert len(stopped.token_ids) < len(free.token_ids) and free.finish_reason == "length"
    # The tokens up to the stop are the free reply's: a stop never changes the sampling.
    assert stopped.token_ids == free.token_ids[: len(stopped.token_ids)]


@pytest.mark.parametrize("decoder", DECODERS)
def test_logprobs_are_the_models_raw_distribution(decoder, request, tokenizer) -> None:
    engine = request.getfixturevalue(decoder)
    prompts = [prompt_ids(tokenizer, transform_messages(text)) for text in TEXTS[:2]]
    asked, plain = engine.generate(
        [
            EngineRequest(
                prompt=prompts[0],
                mix={"tsundere": 1.0},
                params=SamplingParams(
                    max_new_tokens=8, min_new_tokens=8, temperature=0.9, seed=3, top_logprobs=4
                ),
            ),
            EngineRequest(prompt=prompts[1], mix={"airhead": 1.0}),
        ]
    )
    assert plain.top_logprobs == [] and len(plain.token_logprobs) == len(plain.token_ids)
    # Teacher forcing the prompt and the reply gives the distribution each token came from.
    [forced] = engine.forward_logits(
        [EngineRequest(prompt=prompts[0] + asked.token_ids[:-1], mix={"tsundere": 1.0})]
    )
    log_probs = torch.log_softmax(forced[len(prompts[0]) - 1 :], dim=-1)
    chosen = log_probs.gather(1, torch.tensor(asked.token_ids)[:, None])[:, 0]
    assert torch.allclose(torch.tensor(asked.token_logprobs), chosen, atol=1e-4)
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    assert torch.allclose(torch.tensor(asked.token_entropies), entropy, atol=1e-4)
    for step, top in enumerate(asked.top_logprobs):
        assert [token for token, _ in top] == log_probs[step].topk(4).indices.tolist()
        assert [value for _, value in top] == sorted((v for _, v in top), reverse=True)
