"""Trace context crosses a peer call: the peer's server span is a child of the client span."""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.trace import SpanKind

from app.instance.services import services_of
from app.testing import running_app


async def test_the_peers_server_span_joins_the_callers_trace(nats_server, settings_for, spans):
    async with running_app(settings_for(nats_url=nats_server.url, node_ttl=2)) as (app, url):
        peers = services_of(app).peers
        with trace.get_tracer("test").start_as_current_span("caller work") as work:
            response = await peers.get("http://qosmesh/nodes?service=qosmesh")
        assert response.status_code == 200

    finished = spans.get_finished_spans()
    client = next(s for s in finished if s.kind is SpanKind.CLIENT)
    server = next(s for s in finished if s.kind is SpanKind.SERVER and s.name == "GET /nodes")
    trace_id = work.get_span_context().trace_id
    assert client.context.trace_id == trace_id
    assert server.context.trace_id == trace_id
    assert client.parent is not None
    assert client.parent.span_id == work.get_span_context().span_id
    assert server.parent is not None
    assert server.parent.span_id == client.context.span_id
    assert client.attributes is not None
    assert client.attributes["url.full"] == f"{url}/nodes?service=qosmesh"
