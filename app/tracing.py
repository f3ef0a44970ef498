"""Messaging spans after the OpenTelemetry messaging conventions: a PRODUCER `send` span per
publish, whose W3C context travels in the message headers, and a CONSUMER `process` span per
handled message, parented on it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind

from app.messages import Envelope, QoS

tracer = trace.get_tracer("qosmesh")


def _attributes(envelope: Envelope, system: str, operation: str, qos: QoS) -> dict[str, str | int]:
    return {
        "messaging.system": system,
        "messaging.destination.name": envelope.subject,
        "messaging.message.id": envelope.message_id,
        "messaging.operation.type": operation,
        "messaging.operation.name": operation,
        "qosmesh.qos": int(qos),
        "qosmesh.message.type": envelope.type_name,
    }


@contextmanager
def send_span(envelope: Envelope, qos: QoS, system: str) -> Iterator[Span]:
    """Span one publish (retries included) and put its context into the envelope's headers; a
    publish outside any trace (a dead-letter replay from the CLI) starts a new one."""
    attributes = _attributes(envelope, system, "send", qos)
    with tracer.start_as_current_span(
        f"send {envelope.subject}", kind=SpanKind.PRODUCER, attributes=attributes
    ) as span:
        propagate.inject(envelope.headers)
        yield span


@contextmanager
def process_span(envelope: Envelope, qos: QoS, system: str, attempt: int) -> Iterator[Span]:
    """Span one handled delivery, as a child of the publisher's span."""
    attributes = _attributes(envelope, system, "process", qos)
    attributes["messaging.message.delivery_count"] = attempt
    parent = propagate.extract(envelope.headers)
    with tracer.start_as_current_span(
        f"process {envelope.subject}", context=parent, kind=SpanKind.CONSUMER, attributes=attributes
    ) as span:
        yield span
