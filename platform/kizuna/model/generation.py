"""Text generation that reports how sure the model was of every token.

Entropy is taken from the model's raw next-token distribution (before temperature or
top-p), in nats: H = -Σ p log p over the whole vocabulary. It is the uncertainty signal
the active-learning sampler ranks interactions by. The margin, the probability of the
most likely token minus that of the runner-up (same distribution), is the other one:
a small margin means the model hesitated between two tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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


@dataclass(frozen=True)
class Generation:
    """A generated reply and the entropy of each of its tokens."""

    text: str
    token_ids: list[int]
    token_entropies: list[float]
    token_margins: list[float]
    prompt_tokens: int

    @property
    def entropy_mean(self) -> float:
        """Mean token entropy (nats)."""
        return sum(self.token_entropies) / max(len(self.token_entropies), 1)

    @property
    def entropy_max(self) -> float:
        """Highest token entropy (nats)."""
        return max(self.token_entropies, default=0.0)


def token_uncertainty(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Entropy (nats) and top-1 − top-2 margin of the softmax of ``logits`` (last dim).

    Both come from one softmax over the vocabulary: this runs at every decode step.
    """
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    probs = log_probs.exp()
    top = probs.topk(2, dim=-1).values
    return -(probs * log_probs).sum(dim=-1), top[..., 0] - top[..., 1]


def decode_reply(tokenizer: PreTrainedTokenizerBase, ids: list[int]) -> str:
    """The reply's text without special tokens or a trailing partial character."""
    # Byte-level tokenizers split CJK characters over several tokens; a reply cut at
    # max_new_tokens can end inside one, which decodes to U+FFFD. Drop that fragment.
    text = str(tokenizer.decode(ids, skip_special_tokens=True))
    return text.rstrip("\ufffd").strip()


@torch.inference_mode()
def generate(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompt: list[int],
    params: SamplingParams,
) -> Generation:
    """Continue ``prompt`` (token ids) and return the reply with per-token entropies."""
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
    logits = torch.cat(output.logits, dim=0)
    entropy, margin = token_uncertainty(logits)
    entropies, margins = entropy.tolist(), margin.tolist()
    return Generation(
        text=decode_reply(tokenizer, new_ids),
        token_ids=new_ids,
        token_entropies=[round(value, 6) for value in entropies[: len(new_ids)]],
        token_margins=[round(value, 6) for value in margins[: len(new_ids)]],
        prompt_tokens=len(prompt),
    )
