"""QoS 1 and 2 on Redis Streams: persisted, acknowledged, reclaimed, retried, dead-lettered.

A message on subject `shop.order_placed` is an entry of the stream with that key: the envelope
headers are its fields and the body is the field `$body`. Publishing is XADD with `MAXLEN ~`
(concurrent publishes share one pipeline); QoS 2 publishes also set a dedupe key on the message
id in the same Lua script, so a retry after a lost reply never adds the message twice.

Each service reads a stream through one consumer group (the subscription's group; a broadcast
subscription gets a group per instance). Success is XACK; a failure leaves the entry pending
and this consumer claims it again after a backoff; entries idle longer than
APP_REDIS_CLAIM_IDLE (a crashed consumer's) are taken over with XAUTOCLAIM. Redis counts the
deliveries; after APP_MAX_DELIVER the entry goes to the dead-letter stream.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions

from app.brokers.deadlines import Deadlines
from app.messages import Envelope, QoS
from app.observability.instruments import dedupe_hits, sent_series
from app.qos.retries import RetryBudget, publish_reliably
from app.settings import Settings
from app.transports.base import Subscription
from app.transports.batching import Batcher
from app.transports.redis.codec import fields_of
from app.transports.redis.consumer import RedisConsumer
from app.transports.redis.dead_letters import RedisDeadLetters
from app.transports.redis.schedules import Attempt, RedisSchedules

log = logging.getLogger(__name__)

SYSTEM = "redis"
RETRYABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, TimeoutError, OSError)

# Adds the entry only if the dedupe key is new; the key keeps the entry id for the window.
DEDUPED_XADD = """
local previous = redis.call('GET', KEYS[2])
if previous then return {0, previous} end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, 3))
redis.call('SET', KEYS[2], id, 'PX', ARGV[1])
return {1, id}
"""


@dataclass(slots=True, frozen=True)
class _Add:
    key: str
    fields: dict[str, str | bytes]
    dedupe_key: str | None


def batch_client(client: aioredis.Redis) -> aioredis.Redis:
    """A second pool on the same server whose reads have no timeout of their own.

    With `socket_timeout` set, redis-py arms and cancels a timer for every reply it reads: a
    third of the cost of a pipelined XADD. Pipelines sent through this client are bounded by one
    deadline around the whole batch instead (a read cut short drops its connection)."""
    pool = client.connection_pool
    kwargs = {**pool.connection_kwargs, "socket_timeout": None}
    batches = aioredis.ConnectionPool(
        connection_class=pool.connection_class, max_connections=16, **kwargs
    )
    return aioredis.Redis.from_pool(batches)


class RedisStreamsTransport:
    name = "redis"

    def __init__(
        self, redis: aioredis.Redis, settings: Settings, batches: aioredis.Redis | None = None
    ) -> None:
        self._redis = redis
        self._batches = batches or redis  # publish pipelines: see batch_client
        self._settings = settings
        self._budget = RetryBudget.from_settings(settings)
        self._dlq = RedisDeadLetters(redis, settings, self.publish)
        self._schedules = RedisSchedules(redis, settings, self._publish_via, dedupe_key)
        self._publisher: Batcher[_Add, bool] = Batcher(self._flush, size=256)
        self._deadlines = Deadlines()
        self._subscriptions: list[Subscription] = []
        self._consumers: list[RedisConsumer] = []
        # Competing consumers of one service need distinct names: host, process and a nonce.
        self.instance = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"

    @property
    def dead_letters(self) -> RedisDeadLetters:
        return self._dlq

    @property
    def schedules(self) -> RedisSchedules:
        return self._schedules

    @property
    def consumers(self) -> list[RedisConsumer]:
        return list(self._consumers)

    async def start(self) -> None:
        await self._dlq.start()
        for subscription in self._subscriptions:
            consumer = RedisConsumer(
                self._redis, subscription, self._settings, self._dlq, self.instance
            )
            await consumer.start()
            self._consumers.append(consumer)

    async def subscribe(self, subscription: Subscription) -> None:
        self._subscriptions.append(subscription)

    async def publish(self, envelope: Envelope, qos: QoS, first: int = 1) -> None:
        await publish_reliably(
            envelope,
            qos,
            lambda attempt, timeout: self._send(envelope, qos, attempt, timeout),
            self._budget,
            RETRYABLE,
            SYSTEM,
            first,
        )

    async def publish_rest(self, envelope: Envelope, qos: QoS) -> None:
        await self.publish(envelope, qos, first=2)

    async def _publish_via(self, envelope: Envelope, qos: QoS, send: Attempt) -> None:
        await publish_reliably(envelope, qos, send, self._budget, RETRYABLE, SYSTEM)

    async def first_attempts(
        self, envelopes: Sequence[Envelope], qos: QoS, window: int
    ) -> list[Envelope]:
        """As pipelines of `window` entries, one at a time, with no coroutine or future per
        message; returns the envelopes not confirmed."""
        again: list[Envelope] = []
        for start in range(0, len(envelopes), window):
            chunk = envelopes[start : start + window]
            try:
                results = await self._flush([_add(envelope, qos, 1) for envelope in chunk])
            except RETRYABLE:
                again.extend(chunk)
                continue
            for envelope, added in zip(chunk, results, strict=True):
                if isinstance(added, BaseException):
                    again.append(envelope)
                    continue
                if not added:
                    dedupe_hits.add(1, {"side": "publisher"})
                sent_series(SYSTEM, envelope.subject, qos, "ok").add()
        return again

    async def _send(self, envelope: Envelope, qos: QoS, attempt: int, timeout: float) -> None:
        # A deadline that fails the caller's future: wait_for would add a waiter future and two
        # callbacks per publish. A future failed or cancelled here is skipped by the batcher.
        future = self._publisher.submit(_add(envelope, qos, attempt))
        self._deadlines.fail_after(future, timeout, _no_reply)
        added = await future
        if not added:
            dedupe_hits.add(1, {"side": "publisher"})

    async def _flush(self, batch: list[_Add]) -> list[bool | BaseException]:
        window_ms = int(self._settings.duplicate_window * 1000)
        maxlen = self._settings.redis_maxlen
        async with (
            asyncio.timeout(self._budget.attempt_timeout),
            self._batches.pipeline(transaction=False) as pipe,
        ):
            for add in batch:
                if add.dedupe_key is None:
                    pipe.xadd(add.key, add.fields, maxlen=maxlen, approximate=True)  # type: ignore[arg-type]
                else:
                    flat = [part for pair in add.fields.items() for part in pair]
                    pipe.eval(DEDUPED_XADD, 2, add.key, add.dedupe_key, window_ms, maxlen, *flat)
            replies: list[Any] = await pipe.execute(raise_on_error=False)
        results: list[bool | BaseException] = []
        for add, reply in zip(batch, replies, strict=True):
            if isinstance(reply, BaseException):
                results.append(reply)
            elif add.dedupe_key is None:
                results.append(True)
            else:
                results.append(bool(int(reply[0])))
        return results

    async def stop(self, timeout: float) -> None:
        await asyncio.gather(*(c.stop(timeout) for c in self._consumers))
        self._consumers.clear()
        await self._dlq.stop()
        await self._publisher.close()


def _add(envelope: Envelope, qos: QoS, attempt: int) -> _Add:
    """The XADD of one publish attempt; QoS 2 adds it under a dedupe key."""
    return _Add(envelope.subject, fields_of(envelope), dedupe_key(envelope, qos))


def dedupe_key(envelope: Envelope, qos: QoS) -> str | None:
    """The key a QoS 2 publish is deduped on for the duplicate window (None below QoS 2)."""
    if qos != QoS.EXACTLY_ONCE:
        return None
    return f"qm:dedupe:{envelope.subject}:{envelope.dedupe_id or envelope.message_id}"


def _no_reply() -> TimeoutError:
    return TimeoutError("no reply from Redis in time")
