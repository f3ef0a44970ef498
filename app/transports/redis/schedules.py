"""Delayed messages on Redis Streams: a sorted set of due times, moved to the streams by the
lease holder.

A delayed message is a hash `qm:scheduled:<service>:m:<subject>:<id>` (its stream entry's
fields, the stream's key, and the QoS 2 dedupe key) and a member `<subject>:<id>` of the sorted
set `qm:scheduled:<service>` scored by its due time in milliseconds. Scheduling, cancelling and
moving are each one Lua script, so a message is moved or cancelled, never both, and never
moved twice; a tombstone kept for the duplicate window stops a retried publish from scheduling
again what fired or was cancelled. The holder of the lease `scheduler-redis` runs the move
every `MOVE_EVERY`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime

import redis.asyncio as aioredis

from app.brokers.clock import ServerClock, redis_time
from app.messages import Envelope, QoS
from app.settings import Settings
from app.transports.redis.codec import fields_of

Attempt = Callable[[int, float], Awaitable[None]]

log = logging.getLogger(__name__)

STREAM_FIELD = "qm-stream"
DEDUPE_FIELD = "qm-dedupe"
REQUEST_TIMEOUT = 5.0
MOVE_AT_MOST = 500  # per script run: a long script blocks the server for everyone

# KEYS: the set, the message's hash, its tombstone. ARGV: due (ms), member, then the hash's
# fields and values. A message pending, fired or cancelled (within the window) is not added.
SCHEDULE = """
if redis.call('EXISTS', KEYS[2]) == 1 or redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
redis.call('HSET', KEYS[2], unpack(ARGV, 3))
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
return 1
"""

# KEYS: the set, the message's hash, its tombstone. ARGV: member, window (ms).
CANCEL = """
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
if removed == 1 then redis.call('SET', KEYS[3], 'cancelled', 'PX', ARGV[2]) end
return removed
"""

# KEYS: the set. ARGV: at most, hash key prefix, stream MAXLEN, window (ms), tombstone key
# prefix. What is due is judged by Redis's own TIME, never by the lease holder's
# clock. An entry its stream refuses (a key of another type) is tried again in a minute rather
# than holding up every later one. Returns {looked at, refused}.
MOVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, ARGV[1])
local refused = 0
for _, id in ipairs(ids) do
  local key = ARGV[2] .. id
  local flat = redis.call('HGETALL', key)
  local fields, stream, dedupe = {}, nil, nil
  for i = 1, #flat, 2 do
    local name, value = flat[i], flat[i + 1]
    if name == 'qm-stream' then stream = value
    elseif name == 'qm-dedupe' then dedupe = value
    else fields[#fields + 1] = name; fields[#fields + 1] = value end
  end
  local added = true
  if stream and not (dedupe and redis.call('EXISTS', dedupe) == 1) then
    local entry = redis.pcall('XADD', stream, 'MAXLEN', '~', ARGV[3], '*', unpack(fields))
    if type(entry) == 'table' and entry.err then
      added = false
    elseif dedupe then
      redis.call('SET', dedupe, entry, 'PX', ARGV[4])
    end
  end
  if added then
    redis.call('ZREM', KEYS[1], id)
    redis.call('DEL', key)
    redis.call('SET', ARGV[5] .. id, 'fired', 'PX', ARGV[4])
  else
    refused = refused + 1
    redis.call('ZADD', KEYS[1], now + 60000, id)
  end
end
return {#ids, refused}
"""


class RedisSchedules:
    native = False
    max_delay: float | None = None

    def __init__(
        self,
        redis: aioredis.Redis,
        settings: Settings,
        publish: Callable[[Envelope, QoS, Attempt], Awaitable[None]],
        dedupe_key: Callable[[Envelope, QoS], str | None],
    ) -> None:
        self._redis = redis
        self._settings = settings
        self._clock = ServerClock(redis_time(redis))
        self._publish = publish  # each attempt within the transport's retry budget
        self._dedupe_key = dedupe_key
        self.key = f"qm:scheduled:{settings.service_name}"
        self._schedule = redis.register_script(SCHEDULE)
        self._cancel = redis.register_script(CANCEL)
        self._move = redis.register_script(MOVE)

    def _keys(self, subject: str, message_id: str) -> tuple[str, list[str]]:
        """The member of one message (its subject and id: ids of two types may meet) and the
        keys of the set, its hash and its tombstone."""
        member = f"{subject}:{message_id}"
        return member, [self.key, f"{self.key}:m:{member}", f"{self.key}:done:{member}"]

    async def schedule(self, envelope: Envelope, qos: QoS, due: datetime) -> None:
        fields: dict[str, str | bytes] = {**fields_of(envelope), STREAM_FIELD: envelope.subject}
        dedupe = self._dedupe_key(envelope, qos)
        if dedupe is not None:
            fields[DEDUPE_FIELD] = dedupe
        flat = [part for pair in fields.items() for part in pair]
        due_ms = int(-(-due.timestamp() * 1000 // 1))  # rounded up: never early
        member, keys = self._keys(envelope.subject, envelope.message_id)

        async def send(attempt: int, timeout: float) -> None:
            async with asyncio.timeout(timeout):
                await self._schedule(keys, [due_ms, member, *flat])

        await self._publish(envelope, qos, send)

    async def cancel(self, subject: str, message_id: str) -> bool:
        member, keys = self._keys(subject, message_id)
        window_ms = int(self._settings.duplicate_window * 1000)
        async with asyncio.timeout(REQUEST_TIMEOUT):
            return bool(await self._cancel(keys, [member, window_ms]))

    async def backlog(self) -> int:
        async with asyncio.timeout(REQUEST_TIMEOUT):
            return int(await self._redis.zcard(self.key))

    async def now(self) -> datetime:
        return await self._clock.now()

    async def move_due(self, token: int) -> None:
        window_ms = int(self._settings.duplicate_window * 1000)
        maxlen = self._settings.redis_maxlen
        args: list[str | int] = [
            MOVE_AT_MOST,
            f"{self.key}:m:",
            maxlen,
            window_ms,
            f"{self.key}:done:",
        ]
        while True:
            # Bounded: a reply that never comes must not wedge the holder's job for good.
            async with asyncio.timeout(REQUEST_TIMEOUT):
                reply = await self._move([self.key], args)
            looked, refused = (int(n) for n in reply)
            if refused:
                log.warning(
                    "%d due messages refused by their streams: tried again in 60 s", refused
                )
            if looked < MOVE_AT_MOST:
                return  # else more are due: go on at once
