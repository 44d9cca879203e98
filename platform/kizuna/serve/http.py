"""The HTTP API: thin FastAPI routes over :class:`InferenceService`.

Every route but ``/healthz`` and ``/metrics`` needs a bearer token; an unauthenticated
call gets 401 and writes nothing. Bad input is a 4xx naming the field; overload is a
429 with ``Retry-After``; a body over the limit is a 413.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from sqlalchemy.exc import OperationalError

from kizuna import __version__
from kizuna.artifacts import ArtifactIntegrityError
from kizuna.personas import load_profiles
from kizuna.serve.auth import Authenticator, Caller
from kizuna.serve.schemas import (
    ChatCompletionRequest,
    FeedbackRequest,
    TransformRequest,
    TransformResponse,
)
from kizuna.serve.service import (
    BASE_MODEL_NAME,
    BadRequestError,
    InferenceService,
    OverloadedError,
    public_interaction_id,
)
from kizuna.serve.streaming import StreamedReply, chat_completion_events
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
            return JSONResponse({"detail": f"body over {MAX_BODY_BYTES} bytes"}, status_code=413)
        started = time.perf_counter()
        response = await call_next(request)
        # Label by the matched route's template, never the raw path: unmatched paths
        # from scanners would otherwise grow the label set without bound.
        route = request.scope.get("route")
        endpoint = getattr(route, "path", "unmatched")
        service.metrics.requests.labels(endpoint=endpoint, status=str(response.status_code)).inc()
        service.metrics.latency.labels(endpoint=endpoint).observe(time.perf_counter() - started)
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid_body(_: Request, exc: RequestValidationError) -> Response:
        # Only where and why, never the input back: it may be huge, or text that
        # cannot be encoded (which FastAPI's default handler turns into a 500).
        detail = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        body = json.dumps({"detail": detail}, ensure_ascii=True)
        return Response(body, status_code=422, media_type="application/json")

    @app.exception_handler(BadRequestError)
    async def bad_request(_: Request, exc: BadRequestError) -> JSONResponse:
        detail = [{"loc": ["body", exc.field], "msg": exc.message, "type": "value_error"}]
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(OverloadedError)
    async def overloaded(_: Request, exc: OverloadedError) -> JSONResponse:
        headers = {"Retry-After": str(exc.retry_after_s)}
        return JSONResponse({"detail": str(exc)}, status_code=429, headers=headers)

    @app.exception_handler(OperationalError)
    async def store_down(_: Request, exc: OperationalError) -> JSONResponse:
        # Raised only where a request needs the store itself (a device token, feedback,
        # the model list, a first lookup); interactions are journaled on local disk.
        log.warning("store unavailable: %s", exc.orig)
        return JSONResponse(
            {"detail": "the store is unavailable; retry shortly"},
            status_code=503,
            headers={"Retry-After": "2"},
        )

    @app.exception_handler(ArtifactIntegrityError)
    async def unavailable(_: Request, exc: ArtifactIntegrityError) -> JSONResponse:
        return JSONResponse(
            {"detail": f"adapter unavailable: {exc}"},
            status_code=503,
            headers={"Retry-After": "30"},
        )

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

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(
        body: ChatCompletionRequest, caller: Authenticated, key: IdempotencyKey = None
    ) -> dict[str, Any] | StreamingResponse:
        interaction_id = public_interaction_id(caller, key)
        created = int(time.time())
        if body.stream:
            streamed = StreamedReply(service.tokenizer)
            streamed.start(service.chat(body, caller, interaction_id, on_token=streamed.on_token))
            await streamed.started()  # bad input and overload still get their status
            events = chat_completion_events(
                streamed,
                completion_id=interaction_id,
                model=body.model,
                created=created,
                max_tokens=body.max_tokens,
            )
            return StreamingResponse(events, media_type="text/event-stream")
        reply = await service.chat(body, caller, interaction_id)
        generation = reply.generation
        return {
            "id": reply.interaction_id,
            "object": "chat.completion",
            "created": created,
            "model": body.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": generation.text},
                    "finish_reason": reply.finish_reason(body.max_tokens),
                }
            ],
            "usage": {
                "prompt_tokens": generation.prompt_tokens,
                "completion_tokens": len(generation.token_ids),
                "total_tokens": generation.prompt_tokens + len(generation.token_ids),
            },
            "kizuna": reply.kizuna_fields(),
        }

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
