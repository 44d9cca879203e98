"""Streamed replies: pieces that add up to the reply, tokens crossing from the engine's
thread in order, and errors before the first token raised where a status can say so."""

import asyncio
import threading
from pathlib import Path

import pytest

from kizuna.model.base import load_tokenizer
from kizuna.model.generation import ChosenToken, Generation, decode_reply, reply_text
from kizuna.serve.service import Reply
from kizuna.serve.streaming import ReplyText, StreamedReplies

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

    async def scenario() -> tuple[list[str], list[int], Reply]:
        streamed = StreamedReplies(tokenizer)
        [listener] = streamed.listeners

        async def generate() -> list[Reply]:
            decoding = threading.Thread(
                target=lambda: [listener(ChosenToken(t, -1.0)) for t in ids]
            )
            decoding.start()
            await asyncio.to_thread(decoding.join)
            return [_reply(tokenizer, ids)]

        streamed.start(generate())
        await streamed.started()
        deltas = [delta async for delta in streamed.deltas()]
        tokens = [token.id for delta in deltas for token in delta.tokens]
        return [delta.text for delta in deltas], tokens, (await streamed.task)[0]

    pieces, tokens, reply = asyncio.run(scenario())
    assert "".join(pieces) == reply.generation.text == TEXT.strip()
    assert tokens == ids  # every token's logprob travels with some piece, in order


def test_an_error_before_the_first_token_is_raised_by_started(tokenizer) -> None:
    async def scenario() -> None:
        streamed = StreamedReplies(tokenizer)

        async def refused() -> list[Reply]:
            raise LookupError("unknown persona")

        streamed.start(refused())
        await streamed.started()

    with pytest.raises(LookupError, match="unknown persona"):
        asyncio.run(scenario())


@pytest.mark.parametrize("stop", ["わかった", "Fine…", " whatever", "😤", "."])
def test_a_stream_never_sends_a_stop_string_or_what_follows(tokenizer, stop: str) -> None:
    ids = _ids(tokenizer)
    text = ReplyText(tokenizer, stops=(stop, "never"))
    pieces = []
    for n, token in enumerate(ids, start=1):
        pieces.append(text.push([token]))
        if reply_text(tokenizer, ids[:n], (stop,))[1]:
            break  # where the engine ends the row
    final, stopped = reply_text(tokenizer, ids, (stop,))
    assert stopped
    pieces.append(text.finish(final))
    assert "".join(pieces) == final == TEXT.strip()[: TEXT.strip().find(stop)].strip()
