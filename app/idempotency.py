"""Receiver-side idempotency for QoS 2: which messages a consumer has applied, or is applying.

Before a QoS 2 handler runs, the router *claims* the message id atomically; after the handler
returns it marks the claim done, and when the handler fails it releases the claim for the
redelivery. So duplicates arriving at the same moment on different instances, a redelivery, or
a republish after the broker's dedupe window run the handler once.

A claim whose holder died (no result within `stale_after` seconds) is taken over by the next
delivery. A delivery that finds the message being applied elsewhere right now raises
`ClaimBusy` and is redelivered later, when it finds the claim done or stale.

Where this stops: a crash after the handler's effect and before the claim is marked done runs
the handler once more. A handler whose effect must never repeat writes the effect and the
message id in one atomic step (see the example's payment handler).
"""

from __future__ import annotations

import time
from typing import Protocol

import redis.asyncio as aioredis
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from app.errors import QosMeshError
from app.kv import open_bucket, safe_key
from app.settings import Settings

DONE = "done"
_CLAIM_TRIES = 3


class ClaimBusy(QosMeshError):
    """Another delivery of the same message is being applied right now; retry later."""


class IdempotencyStore(Protocol):
    """Claims on message keys, remembered for at least the configured TTL."""

    async def claim(self, key: str, stale_after: float) -> bool:
        """True: apply the message now. False: it was applied already. Raises ClaimBusy."""
        ...

    async def complete(self, key: str) -> None:
        """The message was applied: every later claim answers False."""
        ...

    async def release(self, key: str) -> None:
        """The handler failed: let the next delivery claim it."""
        ...


def _processing() -> str:
    return f"processing {time.time():.3f}"


def _decide(value: str, stale_after: float) -> bool | None:
    """For an existing claim: False when done, None when it may be taken over, else busy."""
    if value == DONE:
        return False
    _, _, started = value.partition(" ")
    try:
        stale = time.time() - float(started) >= stale_after
    except ValueError:
        stale = True
    if stale:
        return None
    raise ClaimBusy("message is being applied by another delivery")


class MemoryIdempotencyStore:
    """In-process store for unit tests and the memory transport."""

    def __init__(self, ttl: float) -> None:
        self._ttl = ttl
        self._claims: dict[str, tuple[str, float]] = {}

    async def claim(self, key: str, stale_after: float) -> bool:
        existing = self._claims.get(key)
        fresh = existing is not None and time.monotonic() - existing[1] < self._ttl
        if existing is not None and fresh and _decide(existing[0], stale_after) is False:
            return False
        self._claims[key] = (_processing(), time.monotonic())
        return True

    async def complete(self, key: str) -> None:
        self._claims[key] = (DONE, time.monotonic())

    async def release(self, key: str) -> None:
        self._claims.pop(key, None)


class KvIdempotencyStore:
    """A JetStream KV bucket per service; keys expire with the bucket's TTL."""

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    @classmethod
    async def open(cls, js: JetStreamContext, settings: Settings) -> KvIdempotencyStore:
        ttl = max(settings.idempotency_ttl, settings.duplicate_window)
        bucket = f"{settings.service_name.replace('-', '_')}_processed"
        return cls(await open_bucket(js, bucket, ttl=ttl, replicas=settings.replicas))

    async def claim(self, key: str, stale_after: float) -> bool:
        kv_key = safe_key(key)
        for _ in range(_CLAIM_TRIES):
            try:
                await self._kv.create(kv_key, _processing().encode())
                return True
            except KeyWrongLastSequenceError:
                pass
            try:
                entry = await self._kv.get(kv_key)
            except KeyNotFoundError:
                continue  # released or expired meanwhile: claim it again
            if _decide((entry.value or b"").decode(), stale_after) is False:
                return False
            try:
                await self._kv.update(kv_key, _processing().encode(), last=entry.revision)
                return True
            except KeyWrongLastSequenceError:
                continue
        raise ClaimBusy("claim kept changing under us")

    async def complete(self, key: str) -> None:
        await self._kv.put(safe_key(key), DONE.encode())

    async def release(self, key: str) -> None:
        await self._kv.delete(safe_key(key))


# Claim atomically: take a missing or stale claim, report a done one, refuse a live one.
_REDIS_CLAIM = """
local current = redis.call('GET', KEYS[1])
if not current then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
  return 1
end
if current == 'done' then return 0 end
local started = tonumber(string.match(current, ' (.*)$')) or 0
if tonumber(ARGV[2]) - started >= tonumber(ARGV[4]) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
  return 1
end
return 2
"""


class RedisIdempotencyStore:
    """Keys `qm:processed:<service>:<key>` in Redis, each expiring after the idempotency TTL, so
    a message path on Redis alone keeps its QoS 2 guarantee without NATS."""

    def __init__(self, redis: aioredis.Redis, settings: Settings) -> None:
        self._redis = redis
        self._prefix = f"qm:processed:{settings.service_name}:"
        self._ttl_ms = int(max(settings.idempotency_ttl, settings.duplicate_window) * 1000)
        self._claim = redis.register_script(_REDIS_CLAIM)

    async def claim(self, key: str, stale_after: float) -> bool:
        now = time.time()
        args: list[str | int | float] = [
            f"processing {now:.3f}",
            f"{now:.3f}",
            self._ttl_ms,
            stale_after,
        ]
        result = int(await self._claim(keys=[self._prefix + key], args=args))
        if result == 2:
            raise ClaimBusy("message is being applied by another delivery")
        return result == 1

    async def complete(self, key: str) -> None:
        await self._redis.set(self._prefix + key, DONE, px=self._ttl_ms)

    async def release(self, key: str) -> None:
        await self._redis.delete(self._prefix + key)
