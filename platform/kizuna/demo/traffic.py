"""Simulated fleet traffic: devices calling the HTTP API as a companion app would.

Each device holds its own API token, favours some personas, and either consents to
training or not. Requests mix personas, strengths and weighted mixes over the neutral
corpus's training sentences plus inputs that are hard for a small model (long, Chinese,
emoji, code, typos, shouting). A retryable refusal (429/503) is retried after its
``Retry-After``, and a gateway failure (5xx from a proxy whose replica died) after a
second, both with the same ``Idempotency-Key``, so the server logs the request once.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx

from kizuna.datasets.corpus import neutral_sentences
from kizuna.datasets.pairs import split_of

#: Inputs a 135M model finds hard: they raise token entropy, which the sampler looks for.
HARD_INPUTS: tuple[str, ...] = (
    "pls help me my laptop wont turn on and i have an exam tmrw!!!",
    "WHY IS THE BUS LATE AGAIN, I HAVE BEEN WAITING FOR FORTY MINUTES.",
    "Can you explain `git rebase -i HEAD~3` in one sentence?",
    "I bought 🍓🍓🍓 and a 🎂 for my sister's birthday tomorrow.",
    "我明天要去面试，但是我还没有准备好自我介绍。",
    "The meeting moved from Tuesday 3pm to Thursday 10am, room 4B, bring the Q3 numbers.",
    "My cat knocked the plant off the shelf, then looked at me like it was my fault.",
    "Ths sentance has sevral speling mistaks but you can stil read it.",
    "今天的天气预报说下午有雷阵雨，记得带伞。",
    "Thanks for yesterday, the soup you recommended was honestly amazing.",
)

RETRYABLE = frozenset({429, 503})
#: Gateway failures (a replica died with the request): retried with the same key.
GATEWAY_FAILURES = frozenset({500, 502, 504})


@dataclass(frozen=True)
class SimulatedDevice:
    """One gadget or app install: its id, API token, favourite personas and consent."""

    device_id: str
    token: str
    personas: tuple[str, ...]
    consent: bool


@dataclass
class TrafficTally:
    """What a burst of traffic got back."""

    sent: int = 0
    answered: int = 0
    retried: int = 0
    refused: int = 0
    #: 5xx answers that a retry with the same Idempotency-Key then got past.
    server_errors: int = 0
    feedback: int = 0
    errors: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    interaction_ids: list[str] = field(default_factory=list)

    def merge(self, other: TrafficTally) -> None:
        """Add ``other``'s counts to this tally."""
        self.sent += other.sent
        self.answered += other.answered
        self.retried += other.retried
        self.refused += other.refused
        self.server_errors += other.server_errors
        self.feedback += other.feedback
        self.errors += other.errors
        self.latencies_ms += other.latencies_ms
        self.interaction_ids += other.interaction_ids


def training_inputs() -> list[str]:
    """Corpus sentences outside the held-out test split (evaluation never sees traffic)."""
    return [s for s in neutral_sentences() if split_of(s) != "test"]


class Fleet:
    """Devices sending transform requests to one server, concurrently."""

    def __init__(
        self,
        url: str,
        devices: Sequence[SimulatedDevice],
        *,
        seed: int = 0,
        max_new_tokens: int = 32,
        hard_share: float = 0.3,
        max_attempts: int = 4,
        timeout_s: float = 120.0,
    ) -> None:
        if not devices:
            raise ValueError("a fleet needs at least one device")
        self.url = url.rstrip("/")
        self.devices = list(devices)
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._inputs = training_inputs()
        self._max_new_tokens = max_new_tokens
        self._hard_share = hard_share
        self._max_attempts = max_attempts
        self._client = httpx.Client(timeout=timeout_s)

    def close(self) -> None:
        """Close the HTTP connections."""
        self._client.close()

    def _request(self, device: SimulatedDevice, persona: str | None) -> dict[str, Any]:
        with self._lock:  # one seeded stream, however the threads interleave
            draw = self._random
            hard = draw.random() < self._hard_share
            text = draw.choice(HARD_INPUTS if hard else self._inputs)
            body: dict[str, Any] = {
                "text": text,
                "strength": draw.choice((0.3, 0.6, 0.8, 1.0)),
                "max_new_tokens": self._max_new_tokens,
                "consent": device.consent,
            }
            if persona is None and draw.random() < 0.15 and len(set(device.personas)) > 1:
                first, second = draw.sample(sorted(set(device.personas)), 2)
                body["mix"] = {first: 0.7, second: 0.3}
            else:
                body["persona"] = persona or draw.choice(device.personas)
            body["thumbs_up"] = draw.random() < 0.7 if draw.random() < 0.3 else None
        return body

    def _call(self, device: SimulatedDevice, persona: str | None) -> TrafficTally:
        tally = TrafficTally(sent=1)
        body = self._request(device, persona)
        thumbs_up = body.pop("thumbs_up")
        headers = {
            "Authorization": f"Bearer {device.token}",
            "Idempotency-Key": str(uuid.uuid4()),
        }
        for attempt in range(self._max_attempts):
            try:
                response = self._client.post(f"{self.url}/v1/transform", json=body, headers=headers)
            except httpx.TransportError as exc:
                # The server went away mid-request: the same key makes a retry safe.
                if attempt + 1 == self._max_attempts:
                    tally.errors.append(f"{type(exc).__name__}: {exc}")
                    return tally
                tally.retried += 1
                time.sleep(1.0)
                continue
            if response.status_code in RETRYABLE | GATEWAY_FAILURES:
                if attempt + 1 == self._max_attempts:
                    if response.status_code in RETRYABLE:
                        tally.refused += 1
                    else:
                        tally.errors.append(f"{response.status_code}: {response.text[:200]}")
                    return tally
                tally.retried += 1
                tally.server_errors += response.status_code in GATEWAY_FAILURES
                time.sleep(float(response.headers.get("Retry-After", "1")))
                continue
            if response.status_code != 200:
                tally.errors.append(f"{response.status_code}: {response.text[:200]}")
                return tally
            answer = response.json()
            tally.answered += 1
            tally.latencies_ms.append(float(answer["latency_ms"]))
            tally.interaction_ids.append(answer["interaction_id"])
            if thumbs_up is not None:
                tally.feedback += self._feedback(device, answer["interaction_id"], thumbs_up)
            return tally
        return tally

    def _feedback(self, device: SimulatedDevice, interaction_id: str, thumbs_up: bool) -> int:
        response = self._client.post(
            f"{self.url}/v1/feedback",
            json={"interaction_id": interaction_id, "thumbs_up": thumbs_up},
            headers={"Authorization": f"Bearer {device.token}"},
        )
        return int(response.status_code == 200)

    def send(self, count: int, *, persona: str | None = None) -> TrafficTally:
        """``count`` requests spread over the devices, one thread per device."""
        tally = TrafficTally()
        with ThreadPoolExecutor(max_workers=len(self.devices)) as pool:
            calls = [
                pool.submit(self._call, self.devices[i % len(self.devices)], persona)
                for i in range(count)
            ]
            for call in calls:
                tally.merge(call.result())
        return tally

    @contextmanager
    def background(self, *, persona: str | None = None) -> Iterator[TrafficTally]:
        """Keep every device sending (one request at a time each) until the block ends."""
        tally = TrafficTally()
        stop = threading.Event()

        def device_loop(device: SimulatedDevice) -> None:
            while not stop.is_set():
                result = self._call(device, persona)
                with self._lock:
                    tally.merge(result)

        threads = [
            threading.Thread(target=device_loop, args=(d,), daemon=True) for d in self.devices
        ]
        for thread in threads:
            thread.start()
        try:
            yield tally
        finally:
            stop.set()
            for thread in threads:
                thread.join()
