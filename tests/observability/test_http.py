"""HTTP server telemetry: the duration histogram and active requests keep the names and
attributes of the stable HTTP conventions, and a SERVER span joins the caller's trace."""

import asyncio
import http.client
from urllib.parse import urlsplit

import httpx
from opentelemetry.trace import SpanKind, StatusCode

from app.testing import running_app

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
DURATION = "http.server.request.duration"


async def test_every_request_is_measured_with_its_route_method_and_status(
    nats_server, settings_for, metrics
):
    common = {"url.scheme": "http", "network.protocol.version": "1.1"}
    nodes = {**common, "http.request.method": "GET", "http.route": "/nodes"}
    refused = {**common, "http.request.method": "GET", "http.route": "/cluster/health"}
    missing = {**common, "http.request.method": "GET", "http.response.status_code": 404}

    def counts() -> list[float]:
        return [
            metrics.value(DURATION, **nodes, **{"http.response.status_code": 200}),
            metrics.value(DURATION, **refused, **{"http.response.status_code": 422}),
            metrics.value(DURATION, **missing),
            metrics.value(DURATION, **{"http.route": "/healthz"}),
        ]

    async with (
        running_app(settings_for(nats_url=nats_server.url)) as (_, url),
        httpx.AsyncClient(base_url=url) as client,
    ):
        before = counts()
        assert (await client.get("/nodes")).status_code == 200
        assert (await client.get("/cluster/health?timeout=-1")).status_code == 422
        assert (await client.get("/no/such/path")).status_code == 404
        assert (await client.get("/healthz")).status_code == 200
        after = counts()
    # One each; the probe is not measured (nor spanned).
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1, 1, 0]
    assert metrics.value("http.server.active_requests") == 0


def get_with_traceparent(url: str, path: str) -> int:
    """A request from an uninstrumented client, so the header sent is the one given."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    try:
        connection.request("GET", path, headers={"traceparent": TRACEPARENT})
        return connection.getresponse().status
    finally:
        connection.close()


async def test_the_server_span_is_named_by_route_and_continues_the_callers_trace(
    nats_server, settings_for, spans
):
    async with running_app(settings_for(nats_url=nats_server.url)) as (_, url):
        status = await asyncio.to_thread(get_with_traceparent, url, "/nodes?service=qosmesh")
        assert status == 200

    server = next(
        s
        for s in spans.get_finished_spans()
        if s.kind is SpanKind.SERVER and s.name == "GET /nodes"
    )
    assert f"{server.context.trace_id:032x}" == TRACE_ID
    assert server.parent is not None
    assert f"{server.parent.span_id:016x}" == "00f067aa0ba902b7"
    assert server.attributes is not None
    assert server.attributes["http.route"] == "/nodes"
    assert server.attributes["http.request.method"] == "GET"
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["url.path"] == "/nodes"
    assert server.attributes["url.query"] == "service=qosmesh"
    assert server.status.status_code is StatusCode.UNSET
