"""Messaging spans in one process: parenting across the hop, attributes, and logs."""

import io
import json
import logging

from opentelemetry import trace
from opentelemetry.trace import SpanKind

from app.bus import Bus
from app.logs import JsonFormatter
from app.qos.claims import MemoryClaimStore
from app.settings import Settings
from app.testing import eventually
from app.transports.memory import MemoryTransport
from tests.transports.conftest import Ping


def memory_bus() -> Bus:
    settings = Settings.model_validate({"qos1_transport": "memory", "service_name": "svc"})
    transport = MemoryTransport(settings)
    return Bus(settings, {"memory": transport}, {"memory": MemoryClaimStore(60)}, "i1")


async def test_consumer_span_is_a_child_of_the_producer_span(spans):
    bus = memory_bus()
    handled: list[int] = []

    async def handle(message: Ping) -> None:
        handled.append(message.n)

    bus.subscribe(Ping, handle)
    await bus.start()
    with trace.get_tracer("test").start_as_current_span("request") as request:
        ping = Ping(n=1)
        await bus.publish(ping)
    await eventually(lambda: handled == [1])
    await bus.stop(1)

    by_name = {span.name: span for span in spans.get_finished_spans()}
    send, process = by_name["send svc.ping"], by_name["process svc.ping"]
    assert send.kind is SpanKind.PRODUCER
    assert process.kind is SpanKind.CONSUMER
    assert send.parent is not None
    assert send.parent.span_id == request.get_span_context().span_id
    assert process.parent is not None
    assert process.parent.span_id == send.context.span_id
    assert process.context.trace_id == request.get_span_context().trace_id
    assert process.attributes is not None
    assert process.attributes["messaging.system"] == "memory"
    assert process.attributes["messaging.destination.name"] == "svc.ping"
    assert process.attributes["messaging.message.id"] == ping.message_id
    assert process.attributes["messaging.operation.type"] == "process"
    assert process.attributes["messaging.message.delivery_count"] == 1
    assert process.attributes["qosmesh.qos"] == 1


async def test_publish_outside_a_request_starts_a_trace(spans):
    bus = memory_bus()
    await bus.start()
    await bus.publish(Ping(n=2))
    await bus.stop(1)
    send = next(s for s in spans.get_finished_spans() if s.name == "send svc.ping")
    assert send.parent is None


def test_log_lines_carry_the_trace_and_span_ids():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("test.logs")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with trace.get_tracer("test").start_as_current_span("work") as span:
            logger.info("inside", extra={"order_id": "o-1"})
        logger.info("outside")
    finally:
        logger.removeHandler(handler)
    inside, outside = (json.loads(line) for line in stream.getvalue().splitlines())
    context = span.get_span_context()
    assert inside["trace_id"] == format(context.trace_id, "032x")
    assert inside["span_id"] == format(context.span_id, "016x")
    assert inside["order_id"] == "o-1"
    assert "trace_id" not in outside


async def test_redis_publish_carries_the_trace_to_the_handler(
    settings_for, redis_server, nats_server, spans
):
    from tests.transports.conftest import running_bus

    handled: list[int] = []

    async def handle(message: Ping) -> None:
        handled.append(message.n)

    settings = settings_for(
        nats_url=nats_server.url,
        redis_url=redis_server.url,
        qos1_transport="redis",
        service_name="svc",
    )
    async with running_bus(settings, lambda bus: bus.subscribe(Ping, handle)) as running:
        with trace.get_tracer("test").start_as_current_span("request") as request:
            await running.bus.publish(Ping(n=5))
        await eventually(lambda: handled == [5])
    finished = spans.get_finished_spans()
    send = next(s for s in finished if s.name == "send svc.ping")
    process = next(s for s in finished if s.name == "process svc.ping")
    assert process.parent is not None
    assert process.parent.span_id == send.context.span_id
    assert process.context.trace_id == request.get_span_context().trace_id
    assert process.attributes is not None
    assert process.attributes["messaging.system"] == "redis"


async def test_a_trace_the_sampler_dropped_records_no_span_but_carries_the_decision(spans):
    bus = memory_bus()
    seen: list[str] = []

    async def handle(message: Ping) -> None:
        seen.append(format(trace.get_current_span().get_span_context().trace_id, "032x"))
        if message.n == 1:
            await bus.publish(Ping(n=2))

    bus.subscribe(Ping, handle)
    await bus.start()
    dropped = trace.SpanContext(
        trace_id=0x5A, span_id=0x5B, is_remote=False, trace_flags=trace.TraceFlags(0)
    )
    with trace.use_span(trace.NonRecordingSpan(dropped)):
        await bus.publish(Ping(n=1))
    await eventually(lambda: len(seen) == 2)
    await bus.stop(1)

    assert seen == [format(0x5A, "032x")] * 2  # the handler and the next hop stay in the trace
    assert spans.get_finished_spans() == ()  # and nothing in it was recorded
