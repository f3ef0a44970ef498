"""Delayed messages on Redis Streams: a sorted set of due times, moved to the streams by the
lease holder.

A delayed message is a hash `qm:scheduled:<service>:m:<id>` (its stream entry's fields, the
stream's key, and the QoS 2 dedupe key) and a member `<id>` of the sorted set
`qm:scheduled:<service>` scored by its due time in milliseconds. Scheduling, cancelling and
moving are each one Lua script, so a message is moved or cancelled, never both, and never
moved twice. The holder of the lease `scheduler-redis` runs the move every `MOVE_EVERY`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import datetime

import redis.asyncio as aioredis

from app.messages import Envelope, QoS
from app.settings import Settings
from app.transports.redis.codec import fields_of

Attempt = Callable[[int, float], Awaitable[None]]

STREAM_FIELD = "qm-stream"
DEDUPE_FIELD = "qm-dedupe"
MOVE_AT_MOST = 500  # per script run: a long script blocks the server for everyone

# KEYS: the set, the message's hash. ARGV: due (ms), id, then the hash's fields and values.
SCHEDULE = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('HSET', KEYS[2], unpack(ARGV, 3))
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
return 1
"""

# KEYS: the set, the message's hash.
CANCEL = """
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
return removed
"""

# KEYS: the set. ARGV: now (ms), at most, hash key prefix, stream MAXLEN, dedupe window (ms).
MOVE = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, id in ipairs(ids) do
  local key = ARGV[3] .. id
  local flat = redis.call('HGETALL', key)
  local fields, stream, dedupe = {}, nil, nil
  for i = 1, #flat, 2 do
    local name, value = flat[i], flat[i + 1]
    if name == 'qm-stream' then stream = value
    elseif name == 'qm-dedupe' then dedupe = value
    else fields[#fields + 1] = name; fields[#fields + 1] = value end
  end
  if stream and not (dedupe and redis.call('EXISTS', dedupe) == 1) then
    local entry = redis.call('XADD', stream, 'MAXLEN', '~', ARGV[4], '*', unpack(fields))
    if dedupe then redis.call('SET', dedupe, entry, 'PX', ARGV[5]) end
  end
  redis.call('ZREM', KEYS[1], id)
  redis.call('DEL', key)
end
return #ids
"""


class RedisSchedules:
    native = False

    def __init__(
        self,
        redis: aioredis.Redis,
        settings: Settings,
        publish: Callable[[Envelope, QoS, Attempt], Awaitable[None]],
        dedupe_key: Callable[[Envelope, QoS], str | None],
    ) -> None:
        self._redis = redis
        self._settings = settings
        self._publish = publish  # each attempt within the transport's retry budget
        self._dedupe_key = dedupe_key
        self.key = f"qm:scheduled:{settings.service_name}"
        self._schedule = redis.register_script(SCHEDULE)
        self._cancel = redis.register_script(CANCEL)
        self._move = redis.register_script(MOVE)

    def _message_key(self, message_id: str) -> str:
        return f"{self.key}:m:{message_id}"

    async def schedule(self, envelope: Envelope, qos: QoS, due: datetime) -> None:
        fields: dict[str, str | bytes] = {**fields_of(envelope), STREAM_FIELD: envelope.subject}
        dedupe = self._dedupe_key(envelope, qos)
        if dedupe is not None:
            fields[DEDUPE_FIELD] = dedupe
        flat = [part for pair in fields.items() for part in pair]
        due_ms = int(-(-due.timestamp() * 1000 // 1))  # rounded up: never early
        keys = [self.key, self._message_key(envelope.message_id)]

        async def send(attempt: int, timeout: float) -> None:
            async with asyncio.timeout(timeout):
                await self._schedule(keys, [due_ms, envelope.message_id, *flat])

        await self._publish(envelope, qos, send)

    async def cancel(self, subject: str, message_id: str) -> bool:
        keys = [self.key, self._message_key(message_id)]
        return bool(await self._cancel(keys, [message_id]))

    async def backlog(self) -> int:
        return int(await self._redis.zcard(self.key))

    async def move_due(self, token: int) -> None:
        now_ms = int(time.time() * 1000)
        window_ms = int(self._settings.duplicate_window * 1000)
        args: list[str | int] = [
            now_ms,
            MOVE_AT_MOST,
            f"{self.key}:m:",
            self._settings.redis_maxlen,
            window_ms,
        ]
        while int(await self._move([self.key], args)) == MOVE_AT_MOST:
            pass  # more are due: go on at once
