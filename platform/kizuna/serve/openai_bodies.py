"""The OpenAI-compatible response bodies and stream chunks, built from :class:`Reply`.

Log-probabilities are the engine's own: each chosen token's log-probability under the
model's raw next-token distribution (before temperature, top-p and penalties, the same
one the entropy is taken from), and its most likely alternatives. vLLM reports the same
distribution by default.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from transformers import PreTrainedTokenizerBase
from transformers.convert_slow_tokenizer import bytes_to_unicode

from kizuna.model.generation import ChosenToken
from kizuna.serve.openai_schemas import ChatCompletionRequest, CompletionRequest
from kizuna.serve.service import Reply
from kizuna.serve.streaming import Delta, StreamFormat

Body = dict[str, Any]


#: Byte-level BPE (GPT-2's, SmolLM2's) spells each byte as one printable character.
_BYTE_OF_CHARACTER = {character: byte for byte, character in bytes_to_unicode().items()}


class TokenTexts:
    """Each token id's own text and bytes, as OpenAI's logprobs name tokens."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self._text = lru_cache(maxsize=65_536)(
            lambda token: str(tokenizer.decode([token], skip_special_tokens=False))
        )
        self._piece = lru_cache(maxsize=65_536)(
            lambda token: str(tokenizer.convert_ids_to_tokens(token))
        )

    def __call__(self, token: int) -> str:
        """The text of ``token`` (a byte-level piece of a character decodes to U+FFFD)."""
        text: str = self._text(token)
        return text

    def bytes_of(self, token: int) -> list[int]:
        """The token's own bytes: for a piece of a character, that piece, not U+FFFD."""
        piece: str = self._piece(token)
        if all(character in _BYTE_OF_CHARACTER for character in piece):
            return [_BYTE_OF_CHARACTER[character] for character in piece]
        return list(self(token).encode())  # not byte-level BPE (or a special token)

    def chat_entry(self, token: int, logprob: float) -> Body:
        """One token in chat's logprobs format."""
        return {"token": self(token), "logprob": logprob, "bytes": self.bytes_of(token)}

    def chat_logprobs(self, tokens: Sequence[ChosenToken]) -> Body:
        """Chat's ``logprobs`` for ``tokens``."""
        content = [
            {
                **self.chat_entry(token.id, token.logprob),
                "top_logprobs": [self.chat_entry(i, value) for i, value in token.top],
            }
            for token in tokens
        ]
        return {"content": content, "refusal": None}

    def legacy_logprobs(self, tokens: Sequence[ChosenToken], *, offset: int = 0) -> Body:
        """Completions' ``logprobs`` for ``tokens``, their text starting at ``offset``."""
        texts = [self(token.id) for token in tokens]
        offsets = []
        for text in texts:
            offsets.append(offset)
            offset += len(text)
        return {
            "tokens": texts,
            "token_logprobs": [token.logprob for token in tokens],
            "top_logprobs": [{self(i): value for i, value in token.top} for token in tokens],
            "text_offset": offsets,
        }


def usage(replies: Sequence[Reply], *, n: int) -> dict[str, int]:
    """Token counts of a request: each prompt once, every choice's reply."""
    prompt = sum(reply.generation.prompt_tokens for reply in replies[::n])
    completion = sum(len(reply.generation.token_ids) for reply in replies)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


@dataclass(frozen=True)
class Envelope:
    """The fields around every body's (or chunk's) choices."""

    id: str
    object: str
    created: int
    model: str

    def __call__(self, choices: list[Body]) -> Body:
        """A body with ``choices``."""
        return {
            "id": self.id,
            "object": self.object,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }


def chat_completion(
    body: ChatCompletionRequest, replies: Sequence[Reply], texts: TokenTexts, *, created: int
) -> Body:
    """The ``chat.completion`` answering ``body``."""
    envelope = Envelope(replies[0].interaction_id, "chat.completion", created, body.model)
    choices = [
        {
            "index": index,
            "message": {"role": "assistant", "content": reply.generation.text},
            "logprobs": texts.chat_logprobs(reply.generation.chosen_tokens())
            if body.logprobs
            else None,
            "finish_reason": reply.generation.finish_reason,
            "kizuna": reply.kizuna_fields(),
        }
        for index, reply in enumerate(replies)
    ]
    # The first choice's fields stay at the top, where clients of one choice read them.
    return {
        **envelope(choices),
        "usage": usage(replies, n=body.n),
        "kizuna": replies[0].kizuna_fields(),
    }


def completion(
    body: CompletionRequest, replies: Sequence[Reply], texts: TokenTexts, *, created: int
) -> Body:
    """The ``text_completion`` answering ``body``."""
    envelope = Envelope(replies[0].interaction_id, "text_completion", created, body.model)
    prompts = body.prompts
    choices = [
        {
            "index": index,
            "text": (prompts[index // body.n] if body.echo else "") + reply.generation.text,
            "logprobs": texts.legacy_logprobs(reply.generation.chosen_tokens())
            if body.logprobs is not None
            else None,
            "finish_reason": reply.generation.finish_reason,
            "kizuna": reply.kizuna_fields(),
        }
        for index, reply in enumerate(replies)
    ]
    return {**envelope(choices), "usage": usage(replies, n=body.n)}


def chat_chunks(body: ChatCompletionRequest, texts: TokenTexts) -> StreamFormat:
    """How a streamed chat completion's chunks look."""

    def opening(index: int) -> Body:
        delta = {"role": "assistant", "content": ""}
        return {"index": index, "delta": delta, "logprobs": None, "finish_reason": None}

    def piece(delta: Delta) -> Body:
        logprobs = texts.chat_logprobs(delta.tokens) if body.logprobs else None
        return {
            "index": delta.index,
            "delta": {"content": delta.text},
            "logprobs": logprobs,
            "finish_reason": None,
        }

    def ending(index: int, reply: Reply) -> Body:
        finish = reply.generation.finish_reason
        return {"index": index, "delta": {}, "logprobs": None, "finish_reason": finish}

    return StreamFormat(opening=opening, piece=piece, ending=ending)


@dataclass
class _Offsets:
    """Where each streamed choice's text has reached, for legacy ``text_offset``."""

    reached: dict[int, int] = field(default_factory=dict)

    def advance(self, index: int, text: str) -> int:
        start = self.reached.get(index, 0)
        self.reached[index] = start + len(text)
        return start


def completion_chunks(body: CompletionRequest, texts: TokenTexts) -> StreamFormat:
    """How a streamed text completion's chunks look (an echoed prompt comes first)."""
    offsets = _Offsets()
    prompts = body.prompts

    def opening(index: int) -> Body:
        text = prompts[index // body.n]
        offsets.advance(index, text)
        return {"index": index, "text": text, "logprobs": None, "finish_reason": None}

    def piece(delta: Delta) -> Body:
        start = offsets.advance(delta.index, delta.text)
        logprobs = (
            texts.legacy_logprobs(delta.tokens, offset=start) if body.logprobs is not None else None
        )
        return {
            "index": delta.index,
            "text": delta.text,
            "logprobs": logprobs,
            "finish_reason": None,
        }

    def ending(index: int, reply: Reply) -> Body:
        finish = reply.generation.finish_reason
        return {"index": index, "text": "", "logprobs": None, "finish_reason": finish}

    return StreamFormat(opening=opening if body.echo else None, piece=piece, ending=ending)
