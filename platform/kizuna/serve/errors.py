"""Every error the API answers, in one shape both kinds of client read.

The body keeps FastAPI's ``detail`` (where and why, for Kizuna's own clients) and adds
OpenAI's ``error`` object (``message``, ``type``, ``param``), which OpenAI's SDKs and
the libraries built on them show to their users; without it they only say "Error code:
400". The input itself is never echoed: it may be huge, or text that cannot be encoded.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException

from kizuna.artifacts import ArtifactIntegrityError
from kizuna.serve.openai_schemas import UnsupportedFieldError
from kizuna.serve.service import BadRequestError, OverloadedError

log = logging.getLogger(__name__)

#: OpenAI's error ``type`` for each status Kizuna answers with.
_KINDS = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
}


def error_response(
    status: int,
    message: str,
    *,
    detail: Any = None,
    param: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """An error answer: ``detail`` (``message`` if not given) and OpenAI's ``error``."""
    error = {"message": message, "type": _KINDS.get(status, "error"), "param": param, "code": None}
    body = {"detail": message if detail is None else detail, "error": error}
    return Response(
        json.dumps(body, ensure_ascii=True),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def _field_error(status: int, field: str, message: str, kind: str) -> Response:
    loc = ["body", *field.split(".")]
    detail = [{"loc": loc, "msg": message, "type": kind}]
    return error_response(status, f"{field}: {message}", detail=detail, param=field)


def install_error_handlers(app: FastAPI) -> None:
    """Answer each known failure with its status and a message naming the cause."""

    @app.exception_handler(RequestValidationError)
    async def invalid_body(_: Request, exc: RequestValidationError) -> Response:
        detail = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        where = [".".join(str(part) for part in e["loc"][1:]) for e in exc.errors()]
        message = "; ".join(f"{w}: {e['msg']}" for w, e in zip(where, detail, strict=True))
        return error_response(422, message, detail=detail, param=where[0] if where else None)

    @app.exception_handler(BadRequestError)
    async def bad_request(_: Request, exc: BadRequestError) -> Response:
        return _field_error(422, exc.field, exc.message, "value_error")

    @app.exception_handler(UnsupportedFieldError)
    async def unsupported(_: Request, exc: UnsupportedFieldError) -> Response:
        return _field_error(400, exc.field, exc.message, "unsupported")

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> Response:
        return error_response(exc.status_code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(OverloadedError)
    async def overloaded(_: Request, exc: OverloadedError) -> Response:
        return error_response(429, str(exc), headers={"Retry-After": str(exc.retry_after_s)})

    @app.exception_handler(OperationalError)
    async def store_down(_: Request, exc: OperationalError) -> Response:
        # Raised only where a request needs the store itself (a device token, feedback,
        # the model list, a first lookup); interactions are journaled on local disk.
        log.warning("store unavailable: %s", exc.orig)
        message = "the store is unavailable; retry shortly"
        return error_response(503, message, headers={"Retry-After": "2"})

    @app.exception_handler(ArtifactIntegrityError)
    async def unavailable(_: Request, exc: ArtifactIntegrityError) -> Response:
        message = f"adapter unavailable: {exc}"
        return error_response(503, message, headers={"Retry-After": "30"})
