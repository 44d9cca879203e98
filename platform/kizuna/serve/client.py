"""Calling a running ``kizuna serve`` from the CLI: JSON calls and streamed chat replies.

The token is the configured one, else the one ``kizuna serve`` generated in the data dir.
Every failure is a ``ValueError`` whose message says what the server answered.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx

from kizuna.config import Settings
from kizuna.serve.tokens import client_token

TIMEOUT_S = 300


class ServerClient:
    """One server, called with this installation's token."""

    def __init__(self, settings: Settings, url: str) -> None:
        self._url = url.rstrip("/")
        token = client_token(settings)
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` and return the JSON answer."""
        try:
            response = httpx.post(
                self._url + path, json=body, headers=self._headers, timeout=TIMEOUT_S
            )
        except httpx.HTTPError as exc:
            raise ValueError(f"cannot reach {self._url}: {exc}") from exc
        _check(response, response.text)
        answer: dict[str, Any] = response.json()
        return answer

    def stream_chat(self, body: dict[str, Any], on_text: Callable[[str], None]) -> dict[str, Any]:
        """A streamed chat completion: each piece of text to ``on_text`` as it comes; the
        reply's Kizuna fields (interaction id, entropy) once it is done."""
        path = "/v1/chat/completions"
        finished: dict[str, Any] = {}
        try:
            with httpx.stream(
                "POST",
                self._url + path,
                json={**body, "stream": True},
                headers=self._headers,
                timeout=TIMEOUT_S,
            ) as response:
                if response.status_code != 200:
                    _check(response, response.read().decode(errors="replace"))
                for line in response.iter_lines():
                    data = line.removeprefix("data: ")
                    if not line.startswith("data: ") or data == "[DONE]":
                        continue
                    event = json.loads(data)
                    if "error" in event:
                        raise ValueError(f"the reply failed: {event['error']['message']}")
                    piece = event["choices"][0]["delta"].get("content")
                    if piece:
                        on_text(piece)
                    finished = event.get("kizuna", finished)
        except httpx.HTTPError as exc:
            raise ValueError(f"cannot reach {self._url}: {exc}") from exc
        if not finished:
            raise ValueError("the stream ended before the reply was finished")
        return finished


def _check(response: httpx.Response, text: str) -> None:
    if response.status_code != 200:
        raise ValueError(f"server answered {response.status_code}: {text[:300]}")
