"""Receiver-side idempotency for QoS 2: which messages a consumer has applied, or is applying.

Before a QoS 2 handler runs, the router *claims* the message id atomically; after the handler
returns it marks the claim done, and when the handler fails it releases the claim for the
redelivery. So duplicates arriving at the same moment on different instances, a redelivery, or
a republish after the broker's dedupe window run the handler once.

A claim whose holder died (no result within `stale_after` seconds) is taken over by the next
delivery. A delivery that finds the message being applied elsewhere right now raises
`ClaimBusy` and is redelivered later, when it finds the claim done or stale.

A claim has an owner: the `Claim` that `claim` returns carries a token (and, on KV, the
revision written). `release` removes the claim only while it is still that owner's, so a
delivery whose claim was taken over can never delete the winner's claim or done mark.
`complete` records "done" whoever holds the claim now: this delivery's effect has been applied,
so "done" is the truth.

Where this stops: a crash after the handler's effect and before the claim is marked done runs
the handler once more. A handler whose effect must never repeat writes the effect and the
message id in one atomic step (see the example's payment handler).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any, Protocol

import redis.asyncio as aioredis
import redis.exceptions
from nats.js import JetStreamContext
from nats.js.errors import BadRequestError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from app.errors import QosMeshError
from app.kv import open_bucket, retrying, safe_key
from app.settings import Settings
from app.transports.retry import RetryBudget, with_retries

log = logging.getLogger(__name__)

DONE = "done"
_WRONG_REVISION = (10071, 10164)  # JetStream: wrong last sequence (per subject)
REDIS_TRANSIENT = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, TimeoutError)
_CLAIM_TRIES = 3


class ClaimBusy(QosMeshError):
    """Another delivery of the same message is being applied right now; retry later."""


@dataclass(slots=True, frozen=True)
class Claim:
    """One delivery's hold on a message key."""

    key: str
    value: str  # "processing <unix time> <token>": unique to this holder
    revision: int = 0  # on KV, the revision the claim was written at


class IdempotencyStore(Protocol):
    """Claims on message keys, remembered for at least the configured TTL."""

    async def claim(self, key: str, stale_after: float) -> Claim | None:
        """A Claim: apply the message now. None: it was applied already. Raises ClaimBusy."""
        ...

    async def complete(self, claim: Claim) -> None:
        """The message was applied: every later claim answers None."""
        ...

    async def release(self, claim: Claim) -> None:
        """The handler failed: let the next delivery claim it (if the claim is still ours)."""
        ...

    async def refresh(self, claim: Claim) -> Claim | None:
        """The handler still runs: the claim, renewed so it does not go stale; None when it
        is no longer ours."""
        ...


class HeldClaims:
    """The claims of the QoS 2 handlers running now, renewed by one sweep, so a claim never
    goes stale while its handler runs (a slow handler is not a dead one)."""

    def __init__(self) -> None:
        self._held: dict[int, list[Any]] = {}  # ticket -> [store, claim, stale_after, renewed]
        self._tickets = itertools.count()

    def hold(self, store: IdempotencyStore, claim: Claim, stale_after: float) -> int:
        ticket = next(self._tickets)
        self._held[ticket] = [store, claim, stale_after, time.monotonic()]
        return ticket

    def let_go(self, ticket: int) -> Claim:
        """The claim as last renewed; no longer renewed."""
        claim: Claim = self._held.pop(ticket)[1]
        return claim

    async def renew(self) -> None:
        """Runs until cancelled."""
        while True:
            period = min((held[2] / 3 for held in self._held.values()), default=1.0)
            await asyncio.sleep(max(0.05, period))
            now = time.monotonic()
            for ticket, held in list(self._held.items()):
                store, claim, stale_after, renewed = held
                if now - renewed < stale_after / 3:
                    continue
                try:
                    fresh = await store.refresh(claim)
                except Exception as exc:
                    log.warning("claim %s not renewed: %s", claim.key, exc)
                    continue
                if fresh is None:
                    log.warning("claim %s was taken over while its handler ran", claim.key)
                if ticket in self._held:
                    self._held[ticket][1:] = [fresh or claim, stale_after, now]


def _processing() -> str:
    return f"processing {time.time():.3f} {secrets.token_hex(8)}"


def _renewed(value: str) -> str:
    """The same holder's claim (same token), started now."""
    token = value.rsplit(" ", 1)[-1]
    return f"processing {time.time():.3f} {token}"


def _decide(value: str, stale_after: float) -> bool | None:
    """For an existing claim: False when done, None when it may be taken over, else busy."""
    if value == DONE:
        return False
    parts = value.split(" ")
    try:
        stale = time.time() - float(parts[1]) >= stale_after
    except (IndexError, ValueError):
        stale = True
    if stale:
        return None
    raise ClaimBusy("message is being applied by another delivery")


class MemoryIdempotencyStore:
    """In-process store for unit tests and the memory transport."""

    def __init__(self, ttl: float) -> None:
        self._ttl = ttl
        self._claims: dict[str, tuple[str, float]] = {}

    async def claim(self, key: str, stale_after: float) -> Claim | None:
        existing = self._claims.get(key)
        fresh = existing is not None and time.monotonic() - existing[1] < self._ttl
        if existing is not None and fresh and _decide(existing[0], stale_after) is False:
            return None
        value = _processing()
        self._claims[key] = (value, time.monotonic())
        return Claim(key, value)

    async def complete(self, claim: Claim) -> None:
        self._claims[claim.key] = (DONE, time.monotonic())

    async def release(self, claim: Claim) -> None:
        if self._claims.get(claim.key, ("", 0.0))[0] == claim.value:
            del self._claims[claim.key]

    async def refresh(self, claim: Claim) -> Claim | None:
        if self._claims.get(claim.key, ("", 0.0))[0] != claim.value:
            return None
        fresh = Claim(claim.key, _renewed(claim.value))
        self._claims[claim.key] = (fresh.value, time.monotonic())
        return fresh


class KvIdempotencyStore:
    """A JetStream KV bucket per service; keys expire with the bucket's TTL."""

    def __init__(self, kv: KeyValue, budget: RetryBudget) -> None:
        self._kv = kv
        self._budget = budget

    @classmethod
    async def open(cls, js: JetStreamContext, settings: Settings) -> KvIdempotencyStore:
        ttl = max(settings.idempotency_ttl, settings.duplicate_window)
        bucket = f"{settings.service_name.replace('-', '_')}_processed"
        kv = await open_bucket(js, bucket, ttl=ttl, replicas=settings.replicas)
        return cls(kv, RetryBudget.from_settings(settings))

    async def claim(self, key: str, stale_after: float) -> Claim | None:
        kv_key = safe_key(key)
        for _ in range(_CLAIM_TRIES):
            value = _processing()
            try:
                revision = await self._kv.create(kv_key, value.encode())
                return Claim(kv_key, value, revision)
            except KeyWrongLastSequenceError:
                pass
            try:
                entry = await self._kv.get(kv_key)
            except KeyNotFoundError:
                continue  # released or expired meanwhile: claim it again
            if _decide((entry.value or b"").decode(), stale_after) is False:
                return None
            try:
                revision = await self._kv.update(kv_key, value.encode(), last=entry.revision)
                return Claim(kv_key, value, revision)
            except KeyWrongLastSequenceError:
                continue
        raise ClaimBusy("claim kept changing under us")

    async def complete(self, claim: Claim) -> None:
        """Retried within the publish budget: the effect is applied, "done" must be kept."""
        await retrying(lambda: self._complete(claim), self._budget, "idempotency mark")

    async def _complete(self, claim: Claim) -> None:
        # Unconditional on purpose: whoever holds the claim now, this delivery's effect is
        # applied, so "done" is what the key must say (a compare first would only cost a
        # per-subject lookup on the server for the same end).
        await self._kv.put(claim.key, DONE.encode())

    async def refresh(self, claim: Claim) -> Claim | None:
        value = _renewed(claim.value)
        try:
            revision = await self._kv.update(claim.key, value.encode(), last=claim.revision)
        except KeyWrongLastSequenceError:
            return None
        return Claim(claim.key, value, revision)

    async def release(self, claim: Claim) -> None:
        # Only while the claim is still ours: never another holder's claim or done mark.
        try:
            await self._kv.delete(claim.key, last=claim.revision)
        except BadRequestError as exc:
            # nats-py names the conflict on update, not on delete: the server's codes say it.
            if exc.err_code not in _WRONG_REVISION:
                raise


# Claim atomically: take a missing or stale claim, report a done one, refuse a live one.
_REDIS_CLAIM = """
local current = redis.call('GET', KEYS[1])
if not current then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
  return 1
end
if current == 'done' then return 0 end
local started = tonumber(string.match(current, '^processing (%S+)')) or 0
if tonumber(ARGV[2]) - started >= tonumber(ARGV[4]) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
  return 1
end
return 2
"""


# Release only the caller's own claim.
_REDIS_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


# Renew only the caller's own claim.
_REDIS_REFRESH = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"""


class RedisIdempotencyStore:
    """Keys `qm:processed:<service>:<key>` in Redis, each expiring after the idempotency TTL, so
    a message path on Redis alone keeps its QoS 2 guarantee without NATS."""

    def __init__(self, redis: aioredis.Redis, settings: Settings) -> None:
        self._redis = redis
        self._prefix = f"qm:processed:{settings.service_name}:"
        self._ttl_ms = int(max(settings.idempotency_ttl, settings.duplicate_window) * 1000)
        self._budget = RetryBudget.from_settings(settings)
        self._claim = redis.register_script(_REDIS_CLAIM)
        self._release = redis.register_script(_REDIS_RELEASE)
        self._refresh = redis.register_script(_REDIS_REFRESH)

    async def claim(self, key: str, stale_after: float) -> Claim | None:
        now = time.time()
        value = f"processing {now:.3f} {secrets.token_hex(8)}"
        args: list[str | int | float] = [value, f"{now:.3f}", self._ttl_ms, stale_after]
        result = int(await self._claim(keys=[self._prefix + key], args=args))
        if result == 2:
            raise ClaimBusy("message is being applied by another delivery")
        return Claim(self._prefix + key, value) if result == 1 else None

    async def complete(self, claim: Claim) -> None:
        """Unconditional on purpose: whoever holds the claim now, our effect is applied.
        Retried within the publish budget."""

        async def mark(_: int, timeout: float) -> None:
            async with asyncio.timeout(timeout):
                await self._redis.set(claim.key, DONE, px=self._ttl_ms)

        await with_retries(mark, self._budget, REDIS_TRANSIENT, "redis", "idempotency mark")

    async def release(self, claim: Claim) -> None:
        await self._release(keys=[claim.key], args=[claim.value])

    async def refresh(self, claim: Claim) -> Claim | None:
        value = _renewed(claim.value)
        renewed = await self._refresh(keys=[claim.key], args=[claim.value, value, self._ttl_ms])
        return Claim(claim.key, value) if int(renewed) else None
