"""Messaging spans after the OpenTelemetry messaging conventions: a PRODUCER `send` span per
publish, whose W3C context travels in the message headers, and a CONSUMER `process` span per
handled message, parented on it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import propagate, trace
from opentelemetry.trace import (
    INVALID_SPAN,
    NoOpTracerProvider,
    ProxyTracerProvider,
    Span,
    SpanKind,
)

from app.messages import Envelope, QoS

tracer = trace.get_tracer("qosmesh")
_installed = False


def _tracing() -> bool:
    """Whether a tracer provider is installed; until one is, spans are no-ops that cost a few
    microseconds per message, so the hot paths skip them (a provider, once set, stays)."""
    global _installed
    if not _installed:
        provider = trace.get_tracer_provider()
        _installed = not isinstance(provider, ProxyTracerProvider | NoOpTracerProvider)
    return _installed


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
    if not _tracing() and not trace.get_current_span().get_span_context().is_valid:
        yield INVALID_SPAN  # nothing to record and no incoming context to pass on
        return
    attributes = _attributes(envelope, system, "send", qos)
    with tracer.start_as_current_span(
        f"send {envelope.subject}", kind=SpanKind.PRODUCER, attributes=attributes
    ) as span:
        propagate.inject(envelope.headers)
        yield span


@contextmanager
def process_span(envelope: Envelope, qos: QoS, system: str, attempt: int) -> Iterator[Span]:
    """Span one handled delivery, as a child of the publisher's span."""
    if not _tracing() and "traceparent" not in envelope.headers:
        yield INVALID_SPAN
        return
    attributes = _attributes(envelope, system, "process", qos)
    attributes["messaging.message.delivery_count"] = attempt
    parent = propagate.extract(envelope.headers)
    with tracer.start_as_current_span(
        f"process {envelope.subject}", context=parent, kind=SpanKind.CONSUMER, attributes=attributes
    ) as span:
        yield span
