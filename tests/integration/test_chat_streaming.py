"""Streamed chat over a real HTTP server: text reaches the client while the engine is
still decoding, and a client that leaves mid-reply loses nothing from the log.

The replica's engine holds its last token until the test lets it go, so "the client had
text before the reply was done" is an ordering, not a timing.
"""

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import httpx
import pytest

from kizuna.config import Settings
from kizuna.model.engine import EngineRequest, build_engine
from kizuna.model.generation import ChosenToken, Generation
from kizuna.serve.runtime import Replica, build_replica
from kizuna.store.interactions import get_interaction
from support import served_over_http

pytestmark = pytest.mark.integration
TOKEN = "stream-test"
MAX_TOKENS = 8
REQUEST = {
    "model": "tsundere",
    "messages": [{"role": "user", "content": "Could you look at my essay?"}],
    "max_tokens": MAX_TOKENS,
    "temperature": 0,
    "stream": True,
}
HEADERS = {"Authorization": f"Bearer {TOKEN}"}


class HeldBeforeLastToken:
    """A replica whose engine stops before a reply's last token until released."""

    def __init__(self, settings: Settings) -> None:
        self.holding = threading.Event()
        self.release = threading.Event()
        self.finished = threading.Event()
        engine = build_engine(settings)

        async def run_one(request: EngineRequest) -> Generation:
            heard: list[ChosenToken] = []
            listener = request.on_token

            def hold(token: ChosenToken) -> None:
                if listener is not None:
                    listener(token)
                heard.append(token)
                if len(heard) == MAX_TOKENS - 1:
                    self.holding.set()
                    assert self.release.wait(timeout=120), "never released"

            held = replace(request, on_token=hold)
            generation = (await asyncio.to_thread(engine.generate, [held]))[0]
            self.finished.set()
            return generation

        self.replica: Replica = build_replica(settings, engine, run_one)


@contextmanager
def http_server(held: HeldBeforeLastToken) -> Iterator[str]:
    try:
        with served_over_http(held.replica.app) as url:
            try:
                yield url
            finally:
                held.release.set()  # the server cannot stop while a reply is held
    finally:
        held.replica.close()


def _events(lines: Iterator[str]) -> Iterator[dict | str]:
    for line in lines:
        if line.startswith("data: "):
            data = line.removeprefix("data: ")
            yield data if data == "[DONE]" else json.loads(data)


@pytest.fixture
def held(bootstrapped: Settings) -> HeldBeforeLastToken:
    return HeldBeforeLastToken(
        Settings(
            data_dir=bootstrapped.data_dir,
            base_model=bootstrapped.base_model,
            device="cpu",
            api_tokens=TOKEN,
        )
    )


def test_text_reaches_the_client_before_the_reply_is_done(held: HeldBeforeLastToken) -> None:
    with (
        http_server(held) as url,
        httpx.stream(
            "POST", f"{url}/v1/chat/completions", json=REQUEST, headers=HEADERS, timeout=60
        ) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = _events(response.iter_lines())
        early: list[str] = []
        for event in events:
            assert isinstance(event, dict), event
            early.append(event["choices"][0]["delta"].get("content", ""))
            if early[-1]:
                break
        # Text came while the engine cannot finish (it holds the last token): streamed.
        assert not held.finished.is_set()
        held.release.set()
        rest = list(events)
    assert rest[-1] == "[DONE]"
    chunks = [event for event in rest[:-1] if isinstance(event, dict)]
    streamed = "".join(early) + "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    last = chunks[-1]
    assert last["choices"][0]["finish_reason"] in {"stop", "length"}
    assert last["kizuna"]["interaction_id"] == last["id"] and last["kizuna"]["entropy_mean"] > 0
    held.replica.service.journal.flush()
    with held.replica.service.sessions() as session:
        logged = get_interaction(session, public_id=last["id"])
    assert logged.output_text == streamed and len(logged.token_entropies) == MAX_TOKENS


def test_a_client_that_leaves_mid_reply_still_has_it_logged(held: HeldBeforeLastToken) -> None:
    with http_server(held) as url:
        with httpx.stream(
            "POST",
            f"{url}/v1/chat/completions",
            json=REQUEST,
            headers={**HEADERS, "Idempotency-Key": "left-early"},
            timeout=60,
        ) as response:
            first = next(_events(response.iter_lines()))
            assert isinstance(first, dict) and first["id"] == "app:left-early"
            assert held.holding.wait(timeout=60)
        # The client has hung up; the engine finishes the reply anyway.
        held.release.set()
        deadline = time.monotonic() + 60
        logged = None
        while logged is None and time.monotonic() < deadline:
            held.replica.service.journal.flush()
            with held.replica.service.sessions() as session:
                try:
                    logged = get_interaction(session, public_id="app:left-early")
                except LookupError:
                    time.sleep(0.1)
        assert logged is not None, "the abandoned reply was never logged"
        assert len(logged.token_entropies) == MAX_TOKENS


def test_bad_input_is_refused_with_a_status_before_any_stream(held: HeldBeforeLastToken) -> None:
    with http_server(held) as url:
        unknown = httpx.post(
            f"{url}/v1/chat/completions",
            json={**REQUEST, "model": "nobody"},
            headers=HEADERS,
            timeout=60,
        )
    assert unknown.status_code == 422 and "model" in unknown.text
    assert not held.holding.is_set()
