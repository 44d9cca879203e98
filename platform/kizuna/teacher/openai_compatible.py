"""The ``openai`` teacher: any OpenAI-compatible chat endpoint.

vLLM, Ollama, a hosted API, or Kizuna's own ``/v1/chat/completions`` all speak this
protocol. The model name may contain ``{persona}``, so that Kizuna's own adapters (the
``model`` field names a persona there) can teach. Requests are rate limited, time out,
and are retried with exponential backoff on connection errors, 429 and 5xx; when the
endpoint stays down, one clear error names it. The API key travels only in the
``Authorization`` header and is never logged or put in an error.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import httpx
from pydantic import SecretStr

from kizuna.config import Settings
from kizuna.teacher.base import StyleRequest, TeacherUnavailableError
from kizuna.teacher.persona_prompt import persona_messages

log = logging.getLogger(__name__)

_RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
BACKOFF_BASE_S = 0.5


class RateLimiter:
    """At most ``per_second`` calls per second, spaced evenly, across threads."""

    def __init__(
        self,
        per_second: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._interval = 1.0 / per_second
        self._clock = clock
        self._sleep = sleep
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        """Block until the next call is allowed."""
        with self._lock:
            now = self._clock()
            start = max(now, self._next)
            self._next = start + self._interval
        if start > now:
            self._sleep(start - now)


class OpenAICompatibleTeacher:
    """Chat completions against one endpoint, one request per input."""

    name = "openai"

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key: SecretStr | None,
        timeout_s: float,
        max_retries: int,
        requests_per_s: float,
        max_tokens: int,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._model = model
        self._max_retries = max_retries
        self._max_tokens = max_tokens
        self._limiter = RateLimiter(requests_per_s)
        headers = {"Authorization": f"Bearer {api_key.get_secret_value()}"} if api_key else {}
        self._client = httpx.Client(headers=headers, timeout=timeout_s, transport=transport)

    @property
    def version(self) -> str:
        """The model and the endpoint's host (never its credentials)."""
        return f"openai:{self._model}@{urlsplit(self._url).netloc.rpartition('@')[2]}"

    def relabel(self, requests: Sequence[StyleRequest]) -> list[str]:
        """One completion per request, in order."""
        return [self._complete(request) for request in requests]

    def _complete(self, request: StyleRequest) -> str:
        body = {
            "model": self._model.format(persona=request.persona.id),
            "messages": persona_messages(request),
            "temperature": 0.0,
            "max_tokens": self._max_tokens,
        }
        answer = self._post(body)
        try:
            content = answer["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as error:
            raise TeacherUnavailableError(
                f"teacher endpoint {self._url} answered without choices[0].message.content"
            ) from error
        return str(content).strip()

    def _post(self, body: dict[str, Any]) -> Any:
        problem = ""
        for attempt in range(self._max_retries + 1):
            if attempt:
                delay = BACKOFF_BASE_S * 2 ** (attempt - 1)
                log.warning("teacher %s: %s; retry %d in %.1fs", self._url, problem, attempt, delay)
                time.sleep(delay)
            self._limiter.wait()
            try:
                response = self._client.post(self._url, json=body)
            except httpx.TransportError as error:
                problem = f"{type(error).__name__}: {error}"
                continue
            if response.status_code in _RETRYABLE_STATUS:
                problem = f"HTTP {response.status_code}"
                continue
            if response.is_error:
                raise TeacherUnavailableError(
                    f"teacher endpoint {self._url} refused the request: HTTP "
                    f"{response.status_code} {response.text[:200]}"
                )
            return response.json()
        raise TeacherUnavailableError(
            f"teacher endpoint {self._url} did not answer after {self._max_retries + 1} "
            f"attempts ({problem}); is it running, and is KIZUNA_TEACHER_URL right?"
        )


def build(settings: Settings) -> OpenAICompatibleTeacher:
    """The endpoint, model and key from the settings (the key from the environment)."""
    if not settings.teacher_url or not settings.teacher_model:
        raise TeacherUnavailableError(
            "the openai teacher needs KIZUNA_TEACHER_URL (e.g. http://127.0.0.1:8000/v1) and "
            "KIZUNA_TEACHER_MODEL (a model name; {persona} is replaced by the persona id)"
        )
    return OpenAICompatibleTeacher(
        base_url=settings.teacher_url,
        model=settings.teacher_model,
        api_key=settings.teacher_api_key,
        timeout_s=settings.teacher_timeout_s,
        max_retries=settings.teacher_max_retries,
        requests_per_s=settings.teacher_requests_per_s,
        max_tokens=settings.teacher_max_new_tokens,
    )
