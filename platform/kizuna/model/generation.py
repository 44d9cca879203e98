"""Text generation that reports how sure the model was of every token.

Entropy is taken from the model's raw next-token distribution (before temperature or
top-p), in nats: H = -Σ p log p over the whole vocabulary. It is the uncertainty signal
the active-learning sampler ranks interactions by. The margin, the probability of the
most likely token minus that of the runner-up (same distribution), is the other one:
a small margin means the model hesitated between two tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from transformers import PreTrainedTokenizerBase
from transformers.generation.utils import GenerateDecoderOnlyOutput


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens; temperature 0 means greedy."""

    max_new_tokens: int = 64
    #: Ignore end-of-sequence until this many tokens exist (fixed-length benchmarks).
    min_new_tokens: int = 0
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    #: Never repeat an n-gram of the reply's own tokens (0: off). The prompt is exempt:
    #: a rewrite must be free to copy its input. 4 was measured best with a mild
    #: repetition penalty (``benchmarks/persona_quality.py``, decoding table).
    no_repeat_ngram: int = 4
    #: CTRL-style penalty on the logits of tokens the reply already holds (1: off).
    repetition_penalty: float = 1.1
    #: OpenAI's additive penalties on the reply's own tokens: a flat one for any token
    #: already used, and one per use.
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    #: The reply ends before the first of these strings; it is never part of the text.
    stop: tuple[str, ...] = ()
    #: How many most likely alternatives to report with each token's log-probability.
    top_logprobs: int = 0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError("min_new_tokens must be in [0, max_new_tokens]")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.no_repeat_ngram < 0 or self.no_repeat_ngram == 1:
            raise ValueError("no_repeat_ngram must be 0 (off) or at least 2")
        if self.repetition_penalty < 1:
            raise ValueError("repetition_penalty must be >= 1")
        if not (-2 <= self.presence_penalty <= 2 and -2 <= self.frequency_penalty <= 2):
            raise ValueError("presence_penalty and frequency_penalty must be in [-2, 2]")
        if any(not stop for stop in self.stop):
            raise ValueError("a stop string must not be empty")
        if self.top_logprobs < 0:
            raise ValueError("top_logprobs must be >= 0")


@dataclass(frozen=True)
class ChosenToken:
    """One token a row chose, as a streamed reply hears it: its id, its log-probability
    and, where asked for, the most likely alternatives (the same raw distribution)."""

    id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class Generation:
    """A generated reply and the entropy of each of its tokens.

    ``token_logprobs`` and ``top_logprobs`` come from the same raw distribution as the
    entropy: each chosen token's log-probability, and the most likely (token, logprob)
    pairs where the request asked for them.
    """

    text: str
    token_ids: list[int]
    token_entropies: list[float]
    token_margins: list[float]
    prompt_tokens: int
    #: ``stop``: end of sequence or a stop string; ``length``: the token budget.
    finish_reason: FinishReason = "stop"
    token_logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)

    def chosen_tokens(self) -> list[ChosenToken]:
        """Each token with its log-probability and alternatives (where they were asked)."""
        tops = self.top_logprobs or [[] for _ in self.token_ids]
        return [
            ChosenToken(id=token, logprob=logprob, top=tuple(top))
            for token, logprob, top in zip(self.token_ids, self.token_logprobs, tops, strict=True)
        ]

    @property
    def entropy_mean(self) -> float:
        """Mean token entropy (nats)."""
        return sum(self.token_entropies) / max(len(self.token_entropies), 1)

    @property
    def entropy_max(self) -> float:
        """Highest token entropy (nats)."""
        return max(self.token_entropies, default=0.0)


def token_uncertainty(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Entropy (nats) and top-1 − top-2 margin of the softmax of ``logits`` (last dim)."""
    return uncertainty_of(torch.log_softmax(logits.float(), dim=-1))


def uncertainty_of(log_probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Entropy (nats) and top-1 − top-2 margin of a log-softmax (last dim).

    Both come from the one softmax the decode also takes log-probabilities from: this
    runs at every decode step.
    """
    probs = log_probs.exp()
    top = probs.topk(2, dim=-1).values
    return -(probs * log_probs).sum(dim=-1), top[..., 0] - top[..., 1]


def cut_at_stop(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    """``text`` up to the first stop string, and whether one was found."""
    found = [index for index in (text.find(stop) for stop in stops) if index >= 0]
    return (text[: min(found)], True) if found else (text, False)


def unsettled_tail(text: str, stops: tuple[str, ...]) -> int:
    """How many characters at the end of ``text`` could still begin a stop string: a
    stream must hold them back until the next token says whether they are part of one."""
    for length in range(min(len(text), max(map(len, stops), default=1) - 1), 0, -1):
        if any(stop.startswith(text[-length:]) for stop in stops):
            return length
    return 0


def reply_text(
    tokenizer: PreTrainedTokenizerBase, ids: list[int], stops: tuple[str, ...] = ()
) -> tuple[str, bool]:
    """The reply's text without special tokens or a trailing partial character, cut
    before the first stop string; and whether one was found."""
    # Byte-level tokenizers split CJK characters over several tokens; a reply cut at
    # max_new_tokens can end inside one, which decodes to U+FFFD. Drop that fragment.
    # Stops are looked for before the ends are stripped: a stop may be a newline.
    text = str(tokenizer.decode(ids, skip_special_tokens=True)).rstrip("\ufffd")
    text, stopped = cut_at_stop(text, stops)
    return text.strip(), stopped


def decode_reply(tokenizer: PreTrainedTokenizerBase, ids: list[int]) -> str:
    """The reply's text without special tokens or a trailing partial character."""
    return reply_text(tokenizer, ids)[0]


@torch.inference_mode()
def generate(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompt: list[int],
    params: SamplingParams,
) -> Generation:
    """Continue ``prompt`` (token ids) and return the reply with per-token entropies.

    transformers' own loop, the reference the engine is tested against: the engine's
    decoding adjustments (repeat and OpenAI penalties, stop strings) are not applied.
    """
    device = next(model.parameters()).device
    input_ids = torch.tensor([prompt], device=device)
    sampling = params.temperature > 0
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        if params.seed is not None:
            torch.manual_seed(params.seed)
        # Causal LM classes and PEFT's wrapper all have GenerationMixin.generate, whose
        # stubs type `self` too narrowly to call through any common base class.
        generator: Any = model
        output: GenerateDecoderOnlyOutput = generator.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=params.max_new_tokens,
            min_new_tokens=params.min_new_tokens,
            do_sample=sampling,
            temperature=params.temperature if sampling else None,
            top_p=params.top_p if sampling else None,
            top_k=None,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            output_logits=True,
            return_dict_in_generate=True,
        )
    if output.logits is None:
        raise RuntimeError("generate returned no logits")
    new_ids = output.sequences[0, len(prompt) :].tolist()
    log_probs = torch.log_softmax(torch.cat(output.logits, dim=0).float(), dim=-1)
    entropy, margin = uncertainty_of(log_probs)
    entropies, margins = entropy.tolist(), margin.tolist()
    chosen = log_probs[: len(new_ids)].gather(1, torch.tensor(new_ids, device=device)[:, None])
    return Generation(
        text=decode_reply(tokenizer, new_ids),
        token_ids=new_ids,
        token_entropies=[round(value, 6) for value in entropies[: len(new_ids)]],
        token_margins=[round(value, 6) for value in margins[: len(new_ids)]],
        prompt_tokens=len(prompt),
        finish_reason="length" if len(new_ids) >= params.max_new_tokens else "stop",
        token_logprobs=[round(value, 6) for value in chosen[:, 0].tolist()],
    )
