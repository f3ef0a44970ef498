"""Trying again: the backoff every retry loop waits, and the budget (attempts, a timeout per
attempt, a deadline) within which a broker operation is retried. Publishes, deliveries, KV and
Redis store operations all use them."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from app.errors import PublishError
from app.observability.instruments import publish_retries, store_retries
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
