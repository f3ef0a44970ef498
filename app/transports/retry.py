"""A QoS 1+ publish as every transport with broker acks does it, within the retry budget."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence

from app.errors import InvalidMessageError, PublishError
from app.messages import Envelope, QoS
from app.observability.instruments import sent_series
from app.observability.spans import send_span, sending_traced
from app.retries import RetryBudget, with_retries


async def publish_reliably(
    envelope: Envelope,
    qos: QoS,
    send: Callable[[int, float], Awaitable[None]],
    budget: RetryBudget,
    retry_on: tuple[type[BaseException], ...],
    system: str,
    first: int = 1,
) -> None:
    """A QoS 1+ publish as every acking transport does it: a producer span, `send(attempt,
    timeout)` retried within the budget (from attempt `first`), and the sent-messages counter
    by outcome. A QoS 2 message without its publisher's message id is refused: the receiver
    could not tell its copies apart from other messages."""
    if qos == QoS.EXACTLY_ONCE and not envelope.message_id:
        raise InvalidMessageError("a QoS 2 message must carry its publisher's message id")
    # Without a span to open, a plain null context: the generator-based one costs on the hot path.
    span = send_span(envelope, qos, system) if sending_traced() else contextlib.nullcontext()
    try:
        with span:
            what = f"message {envelope.message_id}"
            await with_retries(send, budget, retry_on, system, what, first)
    except Exception:
        sent_series(system, envelope.subject, qos, "error").add()
        raise
    sent_series(system, envelope.subject, qos, "ok").add()


async def publish_concurrently(
    publish: Callable[[Envelope, QoS], Awaitable[None]],
    envelopes: Sequence[Envelope],
    qos: QoS,
    window: int,
) -> None:
    """`publish` every envelope, at most `window` at once; every one is tried, then the first
    PublishError (if any) is raised, saying how many were not confirmed."""
    source = iter(envelopes)
    errors: list[PublishError] = []

    async def worker() -> None:
        for envelope in source:
            try:
                await publish(envelope, qos)
            except PublishError as exc:
                errors.append(exc)

    await asyncio.gather(*(worker() for _ in range(max(1, min(window, len(envelopes))))))
    if errors:
        raise PublishError(
            f"{len(errors)} of {len(envelopes)} messages not confirmed; first: {errors[0]}"
        ) from errors[0]
