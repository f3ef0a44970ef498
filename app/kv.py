"""Small helpers for JetStream KV buckets: safe keys and idempotent bucket set-up."""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Awaitable, Callable
from typing import TypeVar

import nats.errors
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import (
    BadRequestError,
    BucketNotFoundError,
    NoStreamResponseError,
    ServiceUnavailableError,
)
from nats.js.kv import KeyValue

from app.retries import RetryBudget, with_retries

T = TypeVar("T")

_VALID_KEY = re.compile(r"^[-/_=a-zA-Z0-9]+(\.[-/_=a-zA-Z0-9]+)*$")
_MAX_PLAIN_KEY = 200


def safe_key(raw: str) -> str:
    """`raw` when it is a valid KV key token, else a stable hash of it (never an error)."""
    if len(raw) <= _MAX_PLAIN_KEY and _VALID_KEY.match(raw):
        return raw
    return "h_" + hashlib.sha256(raw.encode()).hexdigest()


async def open_bucket(
    js: JetStreamContext, bucket: str, *, ttl: float | None, replicas: int, history: int = 1
) -> KeyValue:
    """Open `bucket`, creating it on file storage when missing; an existing bucket keeps its
    config (another instance made it, and rewriting it under running peers is not ours to do)."""
    try:
        return await js.key_value(bucket)
    except BucketNotFoundError:
        pass
    config = KeyValueConfig(
        bucket=bucket,
        history=history,
        ttl=ttl,
        storage=StorageType.FILE,
        replicas=replicas,
    )
    try:
        return await js.create_key_value(config=config)
    except BadRequestError:
        return await js.key_value(bucket)


# Broker trouble worth another try: no answer, no leader (an election), connection churn.
# Logic errors (wrong revision, key not found) are not among them.
TRANSIENT: tuple[type[BaseException], ...] = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.ConnectionClosedError,
    nats.errors.OutboundBufferLimitError,
    ServiceUnavailableError,
    NoStreamResponseError,
    TimeoutError,
)


async def retrying(op: Callable[[], Awaitable[T]], budget: RetryBudget, what: str) -> T:
    """Run a KV operation within the publish retry budget, so a request rides through a
    leader election or a slow broker the same way a publish does, and fails with
    PublishError (503) when the budget is spent."""
    result: list[T] = []

    async def attempt(_: int, timeout: float) -> None:
        # asyncio.timeout, not wait_for: no extra task per KV call on the request path.
        async with asyncio.timeout(timeout):
            result.append(await op())

    await with_retries(attempt, budget, TRANSIENT, "nats", what, operation=what)
    return result[0]
