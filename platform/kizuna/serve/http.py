"""The HTTP API: thin FastAPI routes over :class:`InferenceService`.

Every route but ``/healthz`` and ``/metrics`` needs a bearer token; an unauthenticated
call gets 401 and writes nothing. Bad input is a 4xx naming the field; overload is a
429 with ``Retry-After``; a body over the limit is a 413.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Generic, Protocol, TypeVar

from fastapi import Depends, FastAPI, Header, HTTPException, Request, Response
from fastapi.responses import StreamingResponse

from kizuna import __version__
from kizuna.personas import load_profiles
from kizuna.serve.auth import Authenticator, Caller
from kizuna.serve.errors import error_response, install_error_handlers
from kizuna.serve.openai_bodies import (
    Envelope,
    TokenTexts,
    chat_chunks,
    chat_completion,
    completion,
    completion_chunks,
    usage,
)
from kizuna.serve.openai_schemas import (
    ChatCompletionRequest,
    CompletionRequest,
)
from kizuna.serve.schemas import FeedbackRequest, TransformRequest, TransformResponse
from kizuna.serve.service import (
    BASE_MODEL_NAME,
    InferenceService,
    Reply,
    public_interaction_id,
)
from kizuna.serve.streaming import StreamedReplies, StreamFormat, completion_events
from kizuna.store.db import transaction
from kizuna.store.interactions import set_feedback

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 256 * 1024
OPEN_PATHS = {"/healthz", "/metrics", "/docs", "/openapi.json"}

IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=128)]


def require_caller(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> Caller:
    """The authenticated caller, or 401."""
    authenticator: Authenticator = request.app.state.authenticator
    caller = authenticator.authenticate(authorization)
    if caller is None:
        raise HTTPException(
            401, "missing or invalid bearer token", headers={"WWW-Authenticate": "Bearer"}
        )
    return caller


Authenticated = Annotated[Caller, Depends(require_caller)]


OpenAIBody = TypeVar("OpenAIBody", ChatCompletionRequest, CompletionRequest)
Body_contra = TypeVar("Body_contra", contravariant=True)


class WholeBody(Protocol[Body_contra]):
    """Builds the unstreamed response body."""

    def __call__(
        self, body: Body_contra, replies: Sequence[Reply], texts: TokenTexts, *, created: int
    ) -> dict[str, Any]:
        """The body answering ``body`` with ``replies``."""
        ...


@dataclass(frozen=True)
class OpenAIRoute(Generic[OpenAIBody]):
    """What differs between the chat and the completions route: the service call, the
    whole body, the stream's chunks and their ``object``."""

    answer: Callable[..., Coroutine[Any, Any, list[Reply]]]
    whole: WholeBody[OpenAIBody]
    chunks: Callable[[OpenAIBody, TokenTexts], StreamFormat]
    chunk_object: str


def create_app(service: InferenceService, authenticator: Authenticator) -> FastAPI:
    """The API application for one replica."""
    app = FastAPI(title="Kizuna", version=__version__)
    app.state.authenticator = authenticator

    @app.middleware("http")
    async def limits_and_metrics(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            return error_response(413, f"body over {MAX_BODY_BYTES} bytes")
        started = time.perf_counter()
        response = await call_next(request)
        # Label by the matched route's template, never the raw path: unmatched paths
        # from scanners would otherwise grow the label set without bound.
        route = request.scope.get("route")
        endpoint = getattr(route, "path", "unmatched")
        service.metrics.requests.labels(endpoint=endpoint, status=str(response.status_code)).inc()
        service.metrics.latency.labels(endpoint=endpoint).observe(time.perf_counter() - started)
        return response

    install_error_handlers(app)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(service.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.post("/v1/transform")
    async def transform(
        body: TransformRequest, caller: Authenticated, key: IdempotencyKey = None
    ) -> TransformResponse:
        return await service.transform(body, caller, public_interaction_id(caller, key))

    texts = TokenTexts(service.tokenizer)

    async def respond(
        body: OpenAIBody, caller: Caller, key: str | None, api: OpenAIRoute[OpenAIBody]
    ) -> dict[str, Any] | StreamingResponse:
        interaction_id = public_interaction_id(caller, key)
        created = int(time.time())
        if not body.stream:
            replies = await api.answer(body, caller, interaction_id)
            return api.whole(body, replies, texts, created=created)
        stream = StreamedReplies(service.tokenizer, n=body.choices, stops=body.stops)
        stream.start(api.answer(body, caller, interaction_id, listeners=stream.listeners))
        await stream.started()  # bad input and overload still get their status
        events = completion_events(
            stream,
            api.chunks(body, texts),
            envelope=Envelope(interaction_id, api.chunk_object, created, body.model),
            usage=(lambda done: usage(done, n=body.n)) if body.include_usage else None,
        )
        return StreamingResponse(events, media_type="text/event-stream")

    chat_api = OpenAIRoute(service.chat, chat_completion, chat_chunks, "chat.completion.chunk")
    completion_api = OpenAIRoute(service.complete, completion, completion_chunks, "text_completion")

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(
        body: ChatCompletionRequest, caller: Authenticated, key: IdempotencyKey = None
    ) -> dict[str, Any] | StreamingResponse:
        return await respond(body, caller, key, chat_api)

    @app.post("/v1/completions", response_model=None)
    async def complete(
        body: CompletionRequest, caller: Authenticated, key: IdempotencyKey = None
    ) -> dict[str, Any] | StreamingResponse:
        return await respond(body, caller, key, completion_api)

    @app.get("/v1/models")
    def models(_: Authenticated) -> dict[str, Any]:
        data: list[dict[str, Any]] = [
            {"id": BASE_MODEL_NAME, "object": "model", "owned_by": "kizuna"}
        ]
        for persona, versions in sorted(service.router.versions().items()):
            stable = [v for v, status, _ in versions if status == "stable"]
            canary = [(v, w) for v, status, w in versions if status == "canary" and w > 0]
            data.append(
                {
                    "id": persona,
                    "object": "model",
                    "owned_by": "kizuna",
                    "stable_version": stable[0] if stable else None,
                    "canary_version": canary[0][0] if canary else None,
                    "canary_weight": canary[0][1] if canary else 0.0,
                    "versions": [
                        {"version": v, "status": s, "traffic_weight": w} for v, s, w in versions
                    ],
                }
            )
            data += [
                {"id": f"{persona}@{v}", "object": "model", "owned_by": "kizuna"}
                for v, _, _ in versions
            ]
        return {"object": "list", "data": data}

    @app.get("/v1/personas")
    def personas(_: Authenticated) -> list[dict[str, Any]]:
        return [
            {
                "id": p.id,
                "name": p.name.model_dump(),
                "description": p.description.model_dump(),
                "markers": p.markers.model_dump(),
            }
            for p in load_profiles(service.personas_dir).values()
        ]

    @app.post("/v1/feedback")
    def feedback(body: FeedbackRequest, _: Authenticated) -> dict[str, str]:
        service.journal.flush()
        try:
            with transaction(service.sessions) as session:
                set_feedback(session, public_id=body.interaction_id, thumbs_up=body.thumbs_up)
        except LookupError as exc:
            raise HTTPException(404, str(exc)) from exc
        return {"status": "recorded"}

    return app
