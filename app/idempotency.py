"""Receiver-side idempotency for QoS 2: remembers which messages a consumer has applied.

The router checks the store before a QoS 2 handler runs and marks the message after it returns,
so a redelivery, or a republish after the broker's dedupe window, does not run it again.
Where this stops: a crash after the handler's effect and before the mark runs the handler once
more on redelivery. A handler whose effect must never repeat writes the effect and the message
id in one atomic step (see the example's payment handler), or keeps its effect idempotent.
"""

from __future__ import annotations

import time
from typing import Protocol

import redis.asyncio as aioredis
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from app.kv import open_bucket, safe_key
from app.settings import Settings


class IdempotencyStore(Protocol):
    """Remembers processed message keys for at least the configured TTL."""

    async def seen(self, key: str) -> bool: ...

    async def mark(self, key: str) -> None: ...


class MemoryIdempotencyStore:
    """In-process store for unit tests and the memory transport."""

    def __init__(self, ttl: float) -> None:
        self._ttl = ttl
        self._marks: dict[str, float] = {}

    async def seen(self, key: str) -> bool:
        marked = self._marks.get(key)
        return marked is not None and time.monotonic() - marked < self._ttl

    async def mark(self, key: str) -> None:
        self._marks[key] = time.monotonic()


class KvIdempotencyStore:
    """A JetStream KV bucket per service; keys expire with the bucket's TTL."""

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    @classmethod
    async def open(cls, js: JetStreamContext, settings: Settings) -> KvIdempotencyStore:
        ttl = max(settings.idempotency_ttl, settings.duplicate_window)
        bucket = f"{settings.service_name.replace('-', '_')}_processed"
        return cls(await open_bucket(js, bucket, ttl=ttl, replicas=settings.replicas))

    async def seen(self, key: str) -> bool:
        try:
            await self._kv.get(safe_key(key))
        except KeyNotFoundError:
            return False
        return True

    async def mark(self, key: str) -> None:
        await self._kv.put(safe_key(key), b"1")


class RedisIdempotencyStore:
    """Keys `qm:processed:<service>:<key>` in Redis, each expiring after the idempotency TTL, so
    a message path on Redis alone keeps its QoS 2 guarantee without NATS."""

    def __init__(self, redis: aioredis.Redis, settings: Settings) -> None:
        self._redis = redis
        self._prefix = f"qm:processed:{settings.service_name}:"
        self._ttl_ms = int(max(settings.idempotency_ttl, settings.duplicate_window) * 1000)

    async def seen(self, key: str) -> bool:
        return bool(await self._redis.exists(self._prefix + key))

    async def mark(self, key: str) -> None:
        await self._redis.set(self._prefix + key, b"1", px=self._ttl_ms)
