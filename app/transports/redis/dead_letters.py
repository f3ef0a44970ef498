"""Redis dead letters: one stream per service (`dlq.<service>`) holding every entry that could
not be handled, with the original fields plus why, how often and from where.

An entry is copied here and acked on its stream in one MULTI transaction, so it is dead-lettered
exactly once even when two consumers race for it. Ids are `rd-<stream entry id>`.

The stream is bounded by `APP_DLQ_MAX_MESSAGES` (an exact XTRIM MAXLEN after each copy, whose
count of trimmed entries is the count dropped) and `APP_DLQ_MAX_AGE` (XTRIM MINID); a Redis
stream has no size bound, so `APP_DLQ_MAX_BYTES` is JetStream's only. With
`APP_DLQ_DISCARD=new`, a full stream refuses the copy and the entry stays pending.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis

from app.errors import DeadLetterNotFoundError, DeadLetterStoreFullError
from app.messages import H_ID, H_QOS, Envelope, QoS
from app.observability.instruments import (
    Attributes,
    dead_letters,
    dead_letters_dropped,
    watch_dead_letters,
)
from app.qos.dead_letters import (
    D_AT,
    D_CONSUMER,
    D_DELIVERIES,
    D_ERROR,
    D_ERROR_TYPE,
    D_REASON,
    D_SUBJECT,
    DeadLetter,
    DeadLetterDetail,
    DeadLetterPage,
    Failure,
    detail_from,
    naming,
)
from app.settings import Settings
from app.supervision import supervised
from app.transports.redis.codec import Fields, envelope_from

log = logging.getLogger(__name__)

D_ENTRY = "qm-dlq-entry"
D_GROUP = "qm-dlq-group"
_DLQ_FIELDS = (
    D_REASON,
    D_ERROR,
    D_ERROR_TYPE,
    D_DELIVERIES,
    D_SUBJECT,
    D_ENTRY,
    D_GROUP,
    D_CONSUMER,
    D_AT,
)

Publish = Callable[[Envelope, QoS], Awaitable[None]]
LOAD_REFRESH = 10.0
"""Seconds between reads of the store's length for its gauges."""


class RedisDeadLetters:
    """The dead-letter stream of one service; ids look like `rd-1718000000000-0`."""

    prefix = "rd"

    def __init__(self, redis: aioredis.Redis, settings: Settings, publish: Publish) -> None:
        self._redis = redis
        self._settings = settings
        self._publish = publish
        self.stream = f"dlq.{settings.service_name}"
        self._load: tuple[Attributes, int, int, float] | None = None
        self._unwatch: Callable[[], None] = lambda: None
        self._load_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        policy = self._settings.dlq_discard
        dead_letters_dropped.add(0, {"messaging.system": "redis", "policy": policy})
        self._unwatch = watch_dead_letters(lambda: self._load)
        self._load_task = supervised(self._read_load(), "dlq size")

    async def stop(self) -> None:
        self._unwatch()
        if self._load_task is not None:
            self._load_task.cancel()
            await asyncio.wait({self._load_task}, timeout=2)

    async def _read_load(self) -> None:
        """Keep the store's length for its gauges, read on an interval, never per write."""
        bound = self._settings.dlq_max_messages
        while True:
            try:
                length = int(await self._redis.xlen(self.stream))
                fill = round(length / bound, 4) if bound else 0.0
                self._load = ({"messaging.system": "redis"}, length, 0, fill)
            except Exception as exc:
                log.debug("dead-letter store length not read: %s", exc)
            await asyncio.sleep(LOAD_REFRESH)

    async def add(
        self,
        fields: Fields,
        *,
        subject: str,
        entry: bytes,
        group: str,
        consumer: str,
        failure: Failure,
        deliveries: int,
    ) -> None:
        """Copy the entry here and ack it on its stream, atomically."""
        record: dict[Any, Any] = {
            **{
                k: v
                for k, v in fields.items()
                if not k.decode(errors="replace").startswith("qm-dlq-")
            },
            **failure.record(),
            D_DELIVERIES: str(deliveries),
            D_SUBJECT: subject,
            D_ENTRY: entry,
            D_GROUP: group,
            D_CONSUMER: consumer,
            D_AT: datetime.now(UTC).isoformat(),
        }
        settings = self._settings
        bound = settings.dlq_max_messages
        if settings.dlq_discard == "new" and bound and await self._redis.xlen(self.stream) >= bound:
            dead_letters_dropped.add(1, {"messaging.system": "redis", "policy": "new"})
            raise DeadLetterStoreFullError(
                f"dead-letter stream {self.stream} holds {bound} entries and keeps what it "
                "holds (APP_DLQ_DISCARD=new)"
            )
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.xadd(self.stream, record)
            pipe.xack(subject, group, entry)
            if bound:
                pipe.xtrim(self.stream, maxlen=bound, approximate=False)
            if settings.dlq_max_age:
                oldest = int((time.time() - settings.dlq_max_age) * 1000)
                pipe.xtrim(self.stream, minid=f"{oldest}-0", approximate=False)
            added, acked, *trimmed = await pipe.execute()
        if bound and trimmed and trimmed[0]:
            dead_letters_dropped.add(
                int(trimmed[0]), {"messaging.system": "redis", "policy": "old"}
            )
        if not acked:
            # Another consumer settled it first: keep a single copy.
            await self._redis.xdel(self.stream, added)
            return
        attributes = {"messaging.system": "redis", "destination": subject, "reason": failure.reason}
        dead_letters.add(1, attributes)
        message_id = fields.get(H_ID.encode(), b"").decode(errors="replace")
        log.warning(
            "%s dead-lettered as rd-%s: %s: %s",
            naming(message_id, subject),
            added.decode(),
            failure.reason,
            failure.error,
        )

    # -- the DeadLetterStore contract ------------------------------------------------------

    def _entry(self, dlq_id: str) -> str:
        kind, _, entry = dlq_id.partition("-")
        ms, _, seq = entry.partition("-")
        if kind != self.prefix or not (ms.isdigit() and seq.isdigit()):
            raise DeadLetterNotFoundError(dlq_id)
        return entry

    async def _raw(self, dlq_id: str) -> dict[bytes, bytes]:
        entry = self._entry(dlq_id)
        found: Any = await self._redis.xrange(self.stream, entry, entry, count=1)
        if not found:
            raise DeadLetterNotFoundError(dlq_id)
        return dict(found[0][1])

    def _detail(self, entry: bytes, fields: Fields) -> DeadLetterDetail:
        envelope = envelope_from(fields, "")
        headers = envelope.headers
        stored_at = datetime.fromtimestamp(int(entry.split(b"-")[0]) / 1000, UTC)
        dlq_id = f"{self.prefix}-{entry.decode()}"
        return detail_from(dlq_id, "redis", headers, envelope.body, stored_at)

    async def list(self, limit: int, cursor: str | None) -> DeadLetterPage:
        total = int(await self._redis.xlen(self.stream))
        if limit <= 0:
            return DeadLetterPage(items=[], total=total)
        top = self._entry(cursor) if cursor else "+"
        found: Any = await self._redis.xrevrange(self.stream, top, "-", count=limit + 1)
        items = [
            DeadLetter.model_validate(self._detail(entry, fields).model_dump())
            for entry, fields in found[:limit]
        ]
        more = len(found) > limit
        next_cursor = f"{self.prefix}-{found[limit][0].decode()}" if more else None
        return DeadLetterPage(items=items, total=total, next_cursor=next_cursor)

    async def get(self, dlq_id: str) -> DeadLetterDetail:
        fields = await self._raw(dlq_id)
        return self._detail(self._entry(dlq_id).encode(), fields)

    async def delete(self, dlq_id: str) -> None:
        if not await self._redis.xdel(self.stream, self._entry(dlq_id)):
            raise DeadLetterNotFoundError(dlq_id)

    async def replay(self, dlq_id: str) -> str:
        """Publish the original message again (same message id), then drop the dead letter."""
        fields = await self._raw(dlq_id)
        original = {k: v for k, v in fields.items() if k.decode() not in _DLQ_FIELDS}
        subject = fields[D_SUBJECT.encode()].decode()
        envelope = envelope_from(original, subject)
        message_id = envelope.message_id
        # A fresh publisher dedupe id: the original one may still be inside the window.
        envelope.dedupe_id = f"{message_id}-replay-{dlq_id}"
        qos = QoS(int(envelope.headers.get(H_QOS, "1")))
        await self._publish(envelope, qos)
        await self.delete(dlq_id)
        return message_id
