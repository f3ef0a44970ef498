"""Trying again: the backoff every retry loop waits, the budget (attempts, a timeout per attempt,
a deadline) within which a broker operation is retried, and the QoS 1+ publish every transport
with broker acks makes within it. Publishes, deliveries, KV and Redis store operations all use
them."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from app.errors import InvalidMessageError, PublishError
from app.messages import Envelope, QoS
from app.observability.instruments import publish_retries, sent_series, store_retries
from app.observability.spans import send_span, sending_traced
from app.settings import Settings


def backoff(attempt: int, base: float = 0.1, cap: float = 5.0) -> float:
    """Exponential backoff with jitter for the `attempt`-th retry (1-based): half of the
    exponential step is fixed, half random, so retries spread without collapsing to zero."""
    step = min(cap, base * 2 ** (attempt - 1))
    return float(step / 2 + random.uniform(0, step / 2))  # noqa: S311


@dataclass(slots=True, frozen=True)
class RetryBudget:
    attempts: int
    attempt_timeout: float
    deadline: float

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryBudget:
        return cls(
            settings.publish_attempts, settings.publish_attempt_timeout, settings.publish_deadline
        )


async def with_retries(
    send: Callable[[int, float], Awaitable[None]],
    budget: RetryBudget,
    retry_on: tuple[type[BaseException], ...],
    system: str,
    what: str,
    first: int = 1,
    operation: str = "",
) -> None:
    """Call `send(attempt, timeout)` until it returns, backing off between attempts.

    `first` > 1 continues after attempts made elsewhere (a batch's first attempt), so that
    all of them together are `budget.attempts`. Raises PublishError when the attempts or the
    deadline are spent; errors outside `retry_on` propagate at once. Retries count as publish
    retries, or, given a store `operation`, as that operation's store retries.
    """
    if first > budget.attempts:
        raise PublishError(f"{what} not confirmed after {budget.attempts} attempt(s)")
    started = time.monotonic()
    last: BaseException | None = None
    if first > 1:
        _count_retry(system, operation)
        await asyncio.sleep(backoff(first - 1))
    attempt = first
    for attempt in range(first, budget.attempts + 1):
        remaining = budget.deadline - (time.monotonic() - started)
        if remaining <= 0:
            break
        try:
            await send(attempt, min(budget.attempt_timeout, remaining))
            return
        except retry_on as exc:
            last = exc
        if attempt == budget.attempts:
            break
        pause = backoff(attempt)
        if time.monotonic() - started + pause >= budget.deadline:
            break
        _count_retry(system, operation)
        await asyncio.sleep(pause)
    elapsed = time.monotonic() - started
    raise PublishError(
        f"{what} not confirmed after {attempt} attempt(s) in {elapsed:.1f}s: "
        f"{type(last).__name__ if last else 'deadline'} {last or ''}".strip()
    ) from last


def _count_retry(system: str, operation: str) -> None:
    if operation:
        store_retries.add(1, {"messaging.system": system, "operation": operation})
    else:
        publish_retries.add(1, {"messaging.system": system})


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
