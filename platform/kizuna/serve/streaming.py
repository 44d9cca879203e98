"""Streamed replies: each token's text sent as the engine chooses it.

The engine calls a row's listener from its decoding thread; :class:`StreamedReplies`
hands those tokens to the event loop, and :func:`completion_events` turns them into
OpenAI-style server-sent events, one chunk per choice's new text. The replies run as
their own task, so a client that disconnects mid-stream does not stop them: every
interaction is still logged.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from transformers import PreTrainedTokenizerBase

from kizuna.model.engine import TokenListener
from kizuna.model.generation import ChosenToken, reply_text, unsettled_tail
from kizuna.serve.service import Reply

log = logging.getLogger(__name__)

#: Replies whose clients went away, kept referenced until they finish and are logged.
_unattended: set[asyncio.Task[list[Reply]]] = set()


class ReplyText:
    """A reply's text as its tokens arrive; each push returns what is new and settled.

    The text so far is what :func:`reply_text` makes of the tokens so far, so the pieces
    add up to the unstreamed reply: a character split over tokens waits for its last
    byte, whitespace at either end is not sent, and text that may begin a stop string
    waits until the next tokens complete it (it is never sent) or rule it out.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stops: tuple[str, ...] = ()) -> None:
        self._tokenizer = tokenizer
        self._stops = stops
        self._ids: list[int] = []
        self.sent = ""

    def push(self, tokens: list[int]) -> str:
        """Take the tokens that came since the last push; the text they settle (often
        empty). Each push decodes the reply so far once, so tokens that came together
        are pushed together."""
        self._ids += tokens
        text, stopped = reply_text(self._tokenizer, self._ids, self._stops)
        if not stopped:  # whitespace before a held-back tail is not settled either
            text = text[: len(text) - unsettled_tail(text, self._stops)].rstrip()
        return self._advance(text)

    def finish(self, text: str) -> str:
        """What remains to send of the final ``text``."""
        return self._advance(text)

    def _advance(self, text: str) -> str:
        # A decoder may rewrite earlier text (space clean-up); such text waits for more.
        if not text.startswith(self.sent):
            return ""
        delta, self.sent = text[len(self.sent) :], text
        return delta


@dataclass(frozen=True)
class Delta:
    """New text of one choice, and the tokens it came from (for their logprobs)."""

    index: int
    text: str
    tokens: list[ChosenToken]


class StreamedReplies:
    """The ``n`` choices of one request being generated, their tokens queued on the
    event loop as they come."""

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, *, n: int = 1, stops: tuple[str, ...] = ()
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._tokens: asyncio.Queue[tuple[int, ChosenToken] | None] = asyncio.Queue()
        self._first_token = asyncio.Event()
        self._texts = [ReplyText(tokenizer, stops) for _ in range(n)]
        self._task: asyncio.Task[list[Reply]] | None = None
        #: Each choice's listener, for the engine (called from any thread).
        self.listeners: list[TokenListener] = [partial(self._on_token, i) for i in range(n)]

    def _on_token(self, index: int, token: ChosenToken) -> None:
        self._loop.call_soon_threadsafe(self._arrived, (index, token))

    def _arrived(self, item: tuple[int, ChosenToken]) -> None:
        self._tokens.put_nowait(item)
        self._first_token.set()

    def start(self, replies: Coroutine[Any, Any, list[Reply]]) -> None:
        """Run ``replies`` (a service call given :attr:`listeners`) as its own task."""
        self._task = asyncio.create_task(replies)
        # The end mark follows every token: the listeners' calls were scheduled first.
        self._task.add_done_callback(lambda _: self._tokens.put_nowait(None))

    @property
    def task(self) -> asyncio.Task[list[Reply]]:
        """The replies' task (see :meth:`start`)."""
        if self._task is None:
            raise RuntimeError("the replies were not started")
        return self._task

    async def started(self) -> None:
        """Wait for the first token; replies that fail before it raise their error here,
        while the response can still say so in its status."""
        first = asyncio.ensure_future(self._first_token.wait())
        try:
            await asyncio.wait({first, self.task}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # the client left before the first token
            self.abandon()
            raise
        finally:
            first.cancel()
        if not self._first_token.is_set():
            self.task.result()

    async def deltas(self) -> AsyncIterator[Delta]:
        """Each choice's text in pieces, as its tokens are chosen; the rest at the end.

        A token whose text is not settled yet travels with the next piece of its choice.
        """
        waiting: list[list[ChosenToken]] = [[] for _ in self._texts]
        ended = False
        while not ended:
            arrived = [await self._tokens.get()]
            while not self._tokens.empty():  # tokens that came together go out together
                arrived.append(self._tokens.get_nowait())
            ended = None in arrived
            fresh: dict[int, list[ChosenToken]] = {}
            for item in arrived:
                if item is not None:
                    fresh.setdefault(item[0], []).append(item[1])
            for index, tokens in fresh.items():
                waiting[index] += tokens
                text = self._texts[index].push([token.id for token in tokens])
                if text:
                    yield Delta(index, text, waiting[index])
                    waiting[index] = []
        for index, reply in enumerate(await self.task):
            rest = self._texts[index].finish(reply.generation.text)
            if rest or waiting[index]:
                yield Delta(index, rest, waiting[index])

    def abandon(self) -> None:
        """The client is gone: let the replies finish (and be logged) unwatched."""
        if self._task is not None and not self._task.done():
            _unattended.add(self._task)
            self._task.add_done_callback(_unattended.discard)


ChunkBody = Callable[[int], dict[str, Any]]


@dataclass(frozen=True)
class StreamFormat:
    """How one API shapes its chunks: the empty first piece of a choice (or None), a
    piece of text with its tokens, and a choice's end."""

    opening: ChunkBody | None
    piece: Callable[[Delta], dict[str, Any]]
    ending: Callable[[int, Reply], dict[str, Any]]


async def completion_events(
    streamed: StreamedReplies,
    shape: StreamFormat,
    *,
    envelope: Callable[[list[dict[str, Any]]], dict[str, Any]],
    usage: Callable[[Sequence[Reply]], dict[str, int]] | None,
) -> AsyncIterator[str]:
    """OpenAI-style server-sent events: each choice's opening, its pieces as the tokens
    come and its end (with Kizuna's entropy fields); a usage chunk if asked; ``[DONE]``.

    ``envelope`` wraps a chunk's choices in the API's fields (id, object, model, …).
    """

    def event(body: dict[str, Any]) -> str:
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    choices = len(streamed.listeners)
    try:
        if shape.opening is not None:
            for index in range(choices):
                yield event(envelope([shape.opening(index)]))
        async for delta in streamed.deltas():
            yield event(envelope([shape.piece(delta)]))
        replies = await streamed.task
    except (asyncio.CancelledError, GeneratorExit):
        streamed.abandon()
        raise
    except Exception as exc:  # after the first byte the status is sent: say it in-band
        log.exception("a streamed reply failed")
        yield event({"error": {"message": str(exc), "type": "server_error"}})
        return
    for index, reply in enumerate(replies):
        yield event({**envelope([shape.ending(index, reply)]), "kizuna": reply.kizuna_fields()})
    if usage is not None:
        yield event({**envelope([]), "usage": usage(replies)})
    yield "data: [DONE]\n\n"
