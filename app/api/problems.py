"""Errors as RFC 9457 problem JSON: 422 naming the field, 413 for large bodies, 503 with
Retry-After when the broker does not confirm, and never a bare 500 for known failures."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.brokers import BROKER_ERRORS
from app.errors import (
    BrokerUnavailableError,
    DatabaseUnavailableError,
    DeadLetterNotFoundError,
    DeadRowNotFoundError,
    InvalidMessageError,
    MessageTooLargeError,
    NotReplayableError,
    PublishError,
)

log = logging.getLogger(__name__)

PROBLEM = "application/problem+json"
RETRY_AFTER_SECONDS = 2


def problem(status: int, title: str, detail: str = "", **extra: Any) -> JSONResponse:
    body = {"type": "about:blank", "title": title, "status": status, **extra}
    if detail:
        body["detail"] = detail
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if status == 503 else None
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def _field(loc: tuple[int | str, ...]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header"):
        where, rest = parts[0], parts[1:]
        return f"{where}.{'.'.join(rest)}" if rest else where
    return ".".join(parts)


async def _validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [{"field": _field(tuple(e["loc"])), "message": e["msg"]} for e in exc.errors()]
    fields = ", ".join(e["field"] for e in errors)
    return problem(422, "Invalid request", f"invalid: {fields}", errors=errors)


async def _http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    response = problem(exc.status_code, str(exc.detail))
    for key, value in (exc.headers or {}).items():
        response.headers[key] = value
    if exc.status_code == 405:
        response.headers["Allow"] = ", ".join(_allowed_methods(request))
    return response


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path (Starlette names only the first route's)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        if match is not Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)


async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
    log.warning("unavailable: %s: %s", type(exc).__name__, exc)
    return problem(503, "Broker unavailable", "the message was not confirmed; retry later")


async def _not_found(request: Request, exc: Exception) -> JSONResponse:
    return problem(404, "Not found", str(exc))


async def _too_large_message(request: Request, exc: Exception) -> JSONResponse:
    return problem(413, "Message too large", str(exc))


async def _refused_message(request: Request, exc: Exception) -> JSONResponse:
    return problem(422, "Message refused", str(exc))


async def _not_replayable(request: Request, exc: Exception) -> JSONResponse:
    return problem(409, "Not replayable", str(exc))


def install(app: FastAPI, max_body_bytes: int) -> None:
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(HTTPException, _http)
    app.add_exception_handler(PublishError, _unavailable)
    app.add_exception_handler(BrokerUnavailableError, _unavailable)
    app.add_exception_handler(DatabaseUnavailableError, _unavailable)
    for error in BROKER_ERRORS:
        app.add_exception_handler(error, _unavailable)
    app.add_exception_handler(MessageTooLargeError, _too_large_message)
    app.add_exception_handler(DeadLetterNotFoundError, _not_found)
    app.add_exception_handler(DeadRowNotFoundError, _not_found)
    app.add_exception_handler(InvalidMessageError, _refused_message)
    app.add_exception_handler(NotReplayableError, _not_replayable)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)


class BodyLimit:
    """Answers 413 when a request body is larger than `max_bytes`, declared or streamed."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await self._too_large(scope, receive, send)
                return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLarge()
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await self._too_large(scope, receive, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem(413, "Request body too large", f"limit is {self.max_bytes} bytes")
        await response(scope, receive, send)


class _TooLarge(HTTPException):
    """Raised while the body streams in; an HTTPException so FastAPI's body parsing passes it on."""

    def __init__(self) -> None:
        super().__init__(413, "Request body too large")
