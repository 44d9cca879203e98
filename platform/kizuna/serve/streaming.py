"""Streamed chat replies: each token's text sent as the engine chooses it.

The engine calls a row's listener from its decoding thread; :class:`StreamedReply`
hands those tokens to the event loop, and :func:`chat_completion_events` turns them into
OpenAI-style server-sent events. The reply runs as its own task, so a client that
disconnects mid-stream does not stop it: the interaction is still logged.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from transformers import PreTrainedTokenizerBase

from kizuna.model.generation import decode_reply
from kizuna.serve.service import Reply

log = logging.getLogger(__name__)

#: Replies whose clients went away, kept referenced until they finish and are logged.
_unattended: set[asyncio.Task[Reply]] = set()


class ReplyText:
    """A reply's text as its tokens arrive; each push returns what is new and settled.

    The text so far is what :func:`decode_reply` makes of the tokens so far, so the
    pieces add up to the unstreamed reply: a character split over tokens waits for its
    last byte, and whitespace at either end is not sent.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self.sent = ""

    def push(self, tokens: list[int]) -> str:
        """Take the tokens that came since the last push; the text they settle (often
        empty). Each push decodes the reply so far once, so tokens that came together
        are pushed together."""
        self._ids += tokens
        return self._advance(decode_reply(self._tokenizer, self._ids))

    def finish(self, text: str) -> str:
        """What remains to send of the final ``text``."""
        return self._advance(text)

    def _advance(self, text: str) -> str:
        # A decoder may rewrite earlier text (space clean-up); such text waits for more.
        if not text.startswith(self.sent):
            return ""
        delta, self.sent = text[len(self.sent) :], text
        return delta


class StreamedReply:
    """One reply being generated, its tokens queued on the event loop as they come."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self._loop = asyncio.get_running_loop()
        self._tokens: asyncio.Queue[int | None] = asyncio.Queue()
        self._first_token = asyncio.Event()
        self._text = ReplyText(tokenizer)
        self._task: asyncio.Task[Reply] | None = None

    def on_token(self, token: int) -> None:
        """The engine's listener (any thread)."""
        self._loop.call_soon_threadsafe(self._arrived, token)

    def _arrived(self, token: int) -> None:
        self._tokens.put_nowait(token)
        self._first_token.set()

    def start(self, reply: Coroutine[Any, Any, Reply]) -> None:
        """Run ``reply`` (a service call given :meth:`on_token`) as its own task."""
        self._task = asyncio.create_task(reply)
        # The end mark follows every token: the listener's calls were scheduled first.
        self._task.add_done_callback(lambda _: self._tokens.put_nowait(None))

    @property
    def task(self) -> asyncio.Task[Reply]:
        """The reply's task (see :meth:`start`)."""
        if self._task is None:
            raise RuntimeError("the reply was not started")
        return self._task

    async def started(self) -> None:
        """Wait for the first token; a reply that fails before it raises its error here,
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

    async def deltas(self) -> AsyncIterator[str]:
        """The reply's text in pieces, as its tokens are chosen; the whole reply after."""
        pending: list[int | None] = []
        while True:
            pending.append(await self._tokens.get())
            while not self._tokens.empty():  # tokens that came together go out together
                pending.append(self._tokens.get_nowait())
            delta = self._text.push([t for t in pending if t is not None])
            if delta:
                yield delta
            if None in pending:
                break
            pending.clear()
        rest = self._text.finish((await self.task).generation.text)
        if rest:
            yield rest

    def abandon(self) -> None:
        """The client is gone: let the reply finish (and be logged) unwatched."""
        if self._task is not None and not self._task.done():
            _unattended.add(self._task)
            self._task.add_done_callback(_unattended.discard)


async def chat_completion_events(
    streamed: StreamedReply, *, completion_id: str, model: str, created: int, max_tokens: int
) -> AsyncIterator[str]:
    """OpenAI-style server-sent events: a role chunk, content chunks as the tokens come,
    a finish chunk (with Kizuna's entropy fields) and ``[DONE]``."""

    def event(body: dict[str, Any]) -> str:
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    def chunk(delta: dict[str, str], finish_reason: str | None = None) -> dict[str, Any]:
        return {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }

    try:
        yield event(chunk({"role": "assistant"}))
        async for delta in streamed.deltas():
            yield event(chunk({"content": delta}))
        reply = await streamed.task
    except (asyncio.CancelledError, GeneratorExit):
        streamed.abandon()
        raise
    except Exception as exc:  # after the first byte the status is sent: say it in-band
        log.exception("streamed reply %s failed", completion_id)
        yield event({"error": {"message": str(exc), "type": "server_error"}})
        return
    last = chunk({}, reply.finish_reason(max_tokens))
    last["kizuna"] = reply.kizuna_fields()
    yield event(last)
    yield "data: [DONE]\n\n"
