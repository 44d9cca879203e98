"""Streamed replies: pieces that add up to the reply, tokens crossing from the engine's
thread in order, and errors before the first token raised where a status can say so."""

import asyncio
import threading
from pathlib import Path

import pytest

from kizuna.model.base import load_tokenizer
from kizuna.model.generation import Generation, decode_reply
from kizuna.serve.service import Reply
from kizuna.serve.streaming import ReplyText, StreamedReply

# Multi-byte characters the tiny byte-level tokenizer splits over several tokens.
TEXT = "  はい、わかった！ Fine… 😤 whatever.  "


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    return load_tokenizer(str(tiny_model_dir))


def _ids(tokenizer) -> list[int]:
    return [*tokenizer.encode(TEXT, add_special_tokens=False), tokenizer.eos_token_id]


def _pieces(tokenizer, ids: list[int]) -> list[str]:
    text = ReplyText(tokenizer)
    pieces = [text.push([token]) for token in ids]
    return [*pieces, text.finish(decode_reply(tokenizer, ids))]


def test_pieces_add_up_to_the_reply_and_never_split_a_character(tokenizer) -> None:
    ids = _ids(tokenizer)
    assert len(ids) > len(TEXT)  # characters really are split over tokens
    pieces = _pieces(tokenizer, ids)
    assert "".join(pieces) == decode_reply(tokenizer, ids) == TEXT.strip()
    assert not any("\ufffd" in piece for piece in pieces)
    assert sum(1 for piece in pieces if piece) > 10  # streamed, not sent at the end


def test_a_reply_cut_inside_a_character_streams_what_the_reply_keeps(tokenizer) -> None:
    ids = _ids(tokenizer)
    cut = next(
        n for n in range(1, len(ids)) if tokenizer.decode(ids[:n]).endswith("\ufffd")
    )  # max_new_tokens reached inside a character
    pieces = _pieces(tokenizer, ids[:cut])
    assert "".join(pieces) == decode_reply(tokenizer, ids[:cut])
    assert not any("\ufffd" in piece for piece in pieces)


def _reply(tokenizer, ids: list[int]) -> Reply:
    generation = Generation(
        text=decode_reply(tokenizer, ids),
        token_ids=ids,
        token_entropies=[1.0] * len(ids),
        token_margins=[0.5] * len(ids),
        prompt_tokens=3,
    )
    return Reply(generation, {"tsundere": 1}, "app:key", latency_ms=1.0, cached=False)


def test_tokens_from_the_decoding_thread_arrive_in_order(tokenizer) -> None:
    ids = _ids(tokenizer)

    async def scenario() -> tuple[list[str], Reply]:
        streamed = StreamedReply(tokenizer)

        async def generate() -> Reply:
            decoding = threading.Thread(target=lambda: [streamed.on_token(t) for t in ids])
            decoding.start()
            await asyncio.to_thread(decoding.join)
            return _reply(tokenizer, ids)

        streamed.start(generate())
        await streamed.started()
        pieces = [piece async for piece in streamed.deltas()]
        return pieces, await streamed.task

    pieces, reply = asyncio.run(scenario())
    assert "".join(pieces) == reply.generation.text == TEXT.strip()


def test_an_error_before_the_first_token_is_raised_by_started(tokenizer) -> None:
    async def scenario() -> None:
        streamed = StreamedReply(tokenizer)

        async def refused() -> Reply:
            raise LookupError("unknown persona")

        streamed.start(refused())
        await streamed.started()

    with pytest.raises(LookupError, match="unknown persona"):
        asyncio.run(scenario())
