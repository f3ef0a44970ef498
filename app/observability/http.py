"""HTTP server telemetry after the stable OpenTelemetry HTTP conventions, in one pure ASGI
middleware: the `http.server.request.duration` histogram and `http.server.active_requests` for
every request, and a SERVER span (`POST /orders`) when tracing is on or the caller sent a trace.

It replaces opentelemetry-instrumentation-fastapi, which cost about a fifth of a command's CPU
with tracing off: it looked the route template up again by walking every route, and recorded
four SDK instruments per request (docs/performance.md). Here the route is the one FastAPI
matched (`scope["route"]`), the histogram is aggregated in-process (`instruments.Histogram`),
and no span is started when nothing would record it.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from opentelemetry import propagate
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import SpanKind, Status, StatusCode
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.observability.instruments import Histogram, HistogramSeries, meter
from app.observability.spans import current_span, tracing

# The buckets the conventions advise for http.server.request.duration.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
METHODS = frozenset(
    {"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "QUERY", "TRACE"}
)

request_duration = Histogram(
    "http.server.request.duration",
    "s",
    "Duration of HTTP server requests.",
    DURATION_BUCKETS,
)
_active: dict[tuple[str, str], int] = {}


def _observe_active(options: CallbackOptions) -> Iterable[Observation]:
    return [
        Observation(count, {"http.request.method": method, "url.scheme": scheme})
        for (method, scheme), count in list(_active.items())
    ]


meter.create_observable_up_down_counter(
    "http.server.active_requests",
    callbacks=[_observe_active],
    unit="{request}",
    description="Number of active HTTP server requests.",
)


class _ScopeHeaders(Getter[Scope]):
    """W3C trace context from the raw ASGI headers, without building a Headers object."""

    def get(self, carrier: Scope, key: str) -> list[str] | None:
        wanted = key.lower().encode("latin-1")
        found = [v.decode("latin-1") for k, v in carrier["headers"] if k == wanted]
        return found or None

    def keys(self, carrier: Scope) -> list[str]:
        return [k.decode("latin-1") for k, _ in carrier["headers"]]


_headers = _ScopeHeaders()


class HttpTelemetry:
    """Measures every HTTP request but those to `untraced` paths (probes, the scrape)."""

    def __init__(self, app: ASGIApp, untraced: Collection[str] = ()) -> None:
        self.app = app
        self._untraced = frozenset(untraced)
        self._series: dict[tuple[str, str, str, int, str | None, str | None], HistogramSeries] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self._untraced:
            await self.app(scope, receive, send)
            return
        method = scope["method"] if scope["method"] in METHODS else "_OTHER"
        scheme = scope.get("scheme", "http")
        active = (method, scheme)
        _active[active] = _active.get(active, 0) + 1
        status = 0
        error: str | None = None

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        started = time.perf_counter()
        try:
            if tracing() or any(k == b"traceparent" for k, _ in scope["headers"]):
                await self._traced(scope, receive, sending, method)
            else:
                await self.app(scope, receive, sending)
        except BaseException as exc:
            error = type(exc).__qualname__
            status = status or 500
            raise
        finally:
            _active[active] -= 1
            self._record(scope, method, scheme, status, error, time.perf_counter() - started)

    def _record(
        self,
        scope: Scope,
        method: str,
        scheme: str,
        status: int,
        error: str | None,
        seconds: float,
    ) -> None:
        route = scope.get("route")
        template: str | None = getattr(route, "path", None)
        if error is None and status >= 500:
            error = str(status)
        version = scope.get("http_version", "1.1")
        key = (method, scheme, version, status, template, error)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = request_duration.series(
                _attributes(method, scheme, version, status, template, error)
            )
        series.record(seconds)

    async def _traced(self, scope: Scope, receive: Receive, send: Send, method: str) -> None:
        parent = propagate.extract(scope, getter=_headers)
        client = scope.get("client")
        attributes: dict[str, Any] = {
            "http.request.method": method,
            "url.scheme": scope.get("scheme", "http"),
            "url.path": scope["path"],
            "network.protocol.version": scope.get("http_version", "1.1"),
        }
        if scope.get("query_string"):
            attributes["url.query"] = scope["query_string"].decode("latin-1")
        if client:
            attributes["client.address"], attributes["client.port"] = client[0], client[1]
        server = scope.get("server")
        if server:
            attributes["server.address"], attributes["server.port"] = server[0], server[1]
        with current_span(method, SpanKind.SERVER, attributes, parent) as span:

            async def sending(message: Message) -> None:
                if message["type"] == "http.response.start":
                    code = message["status"]
                    span.set_attribute("http.response.status_code", code)
                    if code >= 500:
                        span.set_status(Status(StatusCode.ERROR))
                await send(message)

            try:
                await self.app(scope, receive, sending)
            finally:
                template = getattr(scope.get("route"), "path", None)
                if template is not None:
                    span.set_attribute("http.route", template)
                    span.update_name(f"{method} {template}")


def _attributes(
    method: str, scheme: str, version: str, status: int, route: str | None, error: str | None
) -> Mapping[str, str | int]:
    attributes: dict[str, str | int] = {
        "http.request.method": method,
        "url.scheme": scheme,
        "network.protocol.version": version,
    }
    if status:
        attributes["http.response.status_code"] = status
    if route is not None:
        attributes["http.route"] = route
    if error is not None:
        attributes["error.type"] = error
    return attributes
