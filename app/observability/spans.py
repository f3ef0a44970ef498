"""Messaging spans after the OpenTelemetry messaging conventions: a PRODUCER `send` span per
publish, whose W3C context travels in the message headers, and a CONSUMER `process` span per
handled message, parented on it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import context, propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import (
    INVALID_SPAN,
    NoOpTracerProvider,
    ProxyTracerProvider,
    Span,
    SpanKind,
    Status,
    StatusCode,
)
from opentelemetry.util.types import Attributes

from app.messages import Envelope, QoS

tracer = trace.get_tracer("qosmesh")
_installed = False
_checked_at = float("-inf")


def tracing() -> bool:
    """Whether a tracer provider is installed; until one is, spans are no-ops that cost a few
    microseconds per message, so the hot paths skip them. A provider, once set, stays; without
    one, the (environment-reading) lookup is repeated at most once a second."""
    global _installed, _checked_at, tracer
    if not _installed:
        now = time.monotonic()
        if now - _checked_at < 1.0:
            return False
        _checked_at = now
        provider = trace.get_tracer_provider()
        _installed = not isinstance(provider, ProxyTracerProvider | NoOpTracerProvider)
        if _installed:
            tracer = provider.get_tracer("qosmesh")  # the provider's own, not a proxy to it
    return _installed


def sending_traced() -> bool:
    """Whether a publish needs a `send_span`: a provider is installed or a trace is current."""
    return tracing() or trace.get_current_span().get_span_context().is_valid


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
def current_span(
    name: str, kind: SpanKind, attributes: Attributes, parent: Context | None = None
) -> Iterator[Span]:
    """`tracer.start_as_current_span` with one context manager instead of three: a span per
    message, or per request, pays for each of them."""
    span = tracer.start_span(name, context=parent, kind=kind, attributes=attributes)
    token = context.attach(trace.set_span_in_context(span))
    try:
        yield span
    except BaseException as exc:
        if isinstance(exc, Exception):
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        raise
    finally:
        context.detach(token)
        span.end()


def _unsampled(span: Span) -> bool:
    """Whether `span` belongs to a trace the sampler dropped: its children are dropped too (the
    SDK's default sampler follows the parent), so they are not started at all, which keeps a
    sampled-out request nearly as cheap as one with tracing off."""
    span_context = span.get_span_context()
    return span_context.is_valid and not span_context.trace_flags.sampled


@contextmanager
def step_span(name: str) -> Iterator[Span]:
    """An INTERNAL span for one step of the work in hand (a store write in a handler), when
    there is a trace to record it in."""
    if not sending_traced() or _unsampled(trace.get_current_span()):
        yield INVALID_SPAN
        return
    with current_span(name, SpanKind.INTERNAL, None) as span:
        yield span


@contextmanager
def send_span(envelope: Envelope, qos: QoS, system: str) -> Iterator[Span]:
    """Span one publish (retries included) and put its context into the envelope's headers; a
    publish outside any trace (a dead-letter replay from the CLI) starts a new one."""
    if not sending_traced():
        yield INVALID_SPAN  # nothing to record and no incoming context to pass on
        return
    current = trace.get_current_span()
    if _unsampled(current):
        propagate.inject(envelope.headers)  # the sampler's decision travels on
        yield current
        return
    attributes = _attributes(envelope, system, "send", qos)
    with current_span(f"send {envelope.subject}", SpanKind.PRODUCER, attributes) as span:
        propagate.inject(envelope.headers)
        yield span


@contextmanager
def process_span(envelope: Envelope, qos: QoS, system: str, attempt: int) -> Iterator[Span]:
    """Span one handled delivery, as a child of the publisher's span."""
    if not tracing() and "traceparent" not in envelope.headers:
        yield INVALID_SPAN
        return
    parent = propagate.extract(envelope.headers)
    remote = trace.get_current_span(parent)
    if _unsampled(remote):
        token = context.attach(parent)  # publishes in the handler carry the trace on
        try:
            yield remote
        finally:
            context.detach(token)
        return
    attributes = _attributes(envelope, system, "process", qos)
    attributes["messaging.message.delivery_count"] = attempt
    with current_span(f"process {envelope.subject}", SpanKind.CONSUMER, attributes, parent) as span:
        yield span
