"""QoS 2 claims (app/qos/claims.py) as Redis keys `qm:processed:<service>:<key>`, so a message path
on Redis alone keeps its QoS 2 guarantee without NATS."""

from __future__ import annotations

import asyncio
import secrets

import redis.asyncio as aioredis

from app.errors import StoreUnavailableError
from app.qos.claims import CLAIMED, DONE, Claim, ClaimBusy
from app.qos.retries import RetryBudget, with_retries
from app.settings import Settings
from app.transports.redis.transport import RETRYABLE

# Claim atomically: take a missing claim, report a done one, refuse a live one. A claim in
# progress lives `stale` ms on Redis's own clock (PX), renewed while its handler runs: a holder
# that died lets it lapse without any host's clock being read. A claim written by an older
# version ("processing <time> <token>", kept for the idempotency TTL) is judged stale by
# Redis's TIME, never by the caller's.
_REDIS_CLAIM = """
local current = redis.call('GET', KEYS[1])
if current == 'done' then return 0 end
if current then
  local started = tonumber(string.match(current, '^processing (%S+)'))
  if not started then return 2 end
  local now = redis.call('TIME')
  if tonumber(now[1]) + tonumber(now[2]) / 1000000 - started < tonumber(ARGV[3]) then
    return 2
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""


# Release only the caller's own claim.
_REDIS_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


# Renew only the caller's own claim, for another `stale` ms.
_REDIS_REFRESH = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""


class RedisClaimStore:
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
        stale_ms = max(1, int(stale_after * 1000))
        value = f"{CLAIMED} {stale_ms} {secrets.token_hex(8)}"
        args: list[str | int | float] = [value, stale_ms, stale_after]
        try:
            result = int(await self._claim(keys=[self._prefix + key], args=args))
        except RETRYABLE as exc:
            raise StoreUnavailableError(f"idempotency store: {type(exc).__name__} {exc}") from exc
        if result == 2:
            raise ClaimBusy("message is being applied by another delivery")
        return Claim(self._prefix + key, value) if result == 1 else None

    async def complete(self, claim: Claim) -> None:
        """Unconditional on purpose: whoever holds the claim now, our effect is applied.
        Retried within the publish budget."""

        async def mark(_: int, timeout: float) -> None:
            async with asyncio.timeout(timeout):
                await self._redis.set(claim.key, DONE, px=self._ttl_ms)

        await with_retries(
            mark,
            self._budget,
            RETRYABLE,
            "redis",
            "idempotency mark",
            operation="idempotency mark",
        )

    async def release(self, claim: Claim) -> None:
        await self._release(keys=[claim.key], args=[claim.value])

    async def refresh(self, claim: Claim) -> Claim | None:
        stale_ms = claim.value.split(" ")[1]  # "claimed <stale ms> <token>"
        renewed = await self._refresh(keys=[claim.key], args=[claim.value, stale_ms])
        return claim if int(renewed) else None
