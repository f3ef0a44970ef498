"""One Redis Streams consumer: a group member feeding a handler with bounded concurrency.

What Redis does not do for us is done here: failed entries are claimed back after a backoff,
a crashed member's entries are taken over with XAUTOCLAIM, entries trimmed away while pending
are acked and counted, a group deleted under us is created again, and a Redis restart is
ridden through by retrying with backoff.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions

from app.observability.instruments import Attributes, watch_lag
from app.qos.dead_letters import Failure
from app.qos.retries import backoff
from app.settings import Settings
from app.supervision import supervised
from app.transports import consuming
from app.transports.base import Delivery, Subscription
from app.transports.batching import Batcher
from app.transports.consuming import (
    DELIVERY_MARGIN,
    GIVEN_UP,
    ConsumerMetrics,
    HandlerTasks,
    Verdict,
    run_delivery,
    settle,
)
from app.transports.redis.codec import Fields, envelope_from
from app.transports.redis.dead_letters import RedisDeadLetters

log = logging.getLogger(__name__)

SYSTEM = "redis"
BROKER_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)
_GONE, _THEIRS, _MINE, _TRIMMED = range(4)
# A failed entry's retry: claimed only if this consumer still owns it (another member may have
# reclaimed it meanwhile and be running it now), in one step, so nothing can slip in between.
RETRY_CLAIM = """
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #pending == 0 then return {0} end
if pending[1][2] ~= ARGV[2] then return {1} end
local claimed = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3])
if #claimed == 0 or not claimed[1] or not claimed[1][2] then return {3} end
return {2, pending[1][4] + 1, claimed[1][2]}
"""
# Reset the idle time of the entries still this consumer's; one another member took over is
# left to it (XCLAIM alone would take it back).
KEEP_MINE = """
local kept = 0
for i = 3, #ARGV do
  local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if #pending > 0 and pending[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    kept = kept + 1
  end
end
return kept
"""
HOLD_CLAIM_IDLES = 3  # a busy QoS 2 claim goes stale after one ack wait: held past that


def parse_autoclaim(reply: Any) -> tuple[bytes, list[tuple[bytes, Fields]], list[bytes]]:
    """XAUTOCLAIM's reply as (next cursor, live entries, deleted ids) on every server version.

    Redis 7+ answers [cursor, entries, deleted ids] and drops deleted ids from the pending
    list itself; Redis 6.2 answers [cursor, entries] where a trimmed entry has no fields (nil),
    and it stays pending until acked.
    """
    cursor, entries = reply[0], reply[1] or []
    deleted = list(reply[2]) if len(reply) > 2 and reply[2] else []
    live: list[tuple[bytes, Fields]] = []
    for entry_id, fields in entries:
        if entry_id is None:
            continue
        if fields:
            live.append((entry_id, fields))
        else:
            deleted.append(entry_id)
    return cursor, live, deleted


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisConsumer:
    def __init__(
        self,
        redis: aioredis.Redis,
        subscription: Subscription,
        settings: Settings,
        dlq: RedisDeadLetters,
        instance: str,
    ) -> None:
        self._redis = redis
        self._retry_claim = redis.register_script(RETRY_CLAIM)
        self._keep_mine = redis.register_script(KEEP_MINE)
        self._sub = subscription
        self._settings = settings
        self._dlq = dlq
        self.key = subscription.subject
        self.broadcast = subscription.group is None
        self.group = subscription.group or subscription.name
        self.name = subscription.name if self.broadcast else f"{subscription.name}@{instance}"
        self._claim_idle = settings.redis_claim_idle
        self._handlers = HandlerTasks(settings.consumer_concurrency)
        self._retries: list[tuple[float, bytes]] = []  # (due, entry id)
        self._stopping = False
        self._loop_task: asyncio.Task[None] | None = None
        self._keepalive_task: asyncio.Task[None] | None = None
        self._lag_task: asyncio.Task[None] | None = None
        self._pending: int | None = None  # the group's lag + pending, until the first read
        self._unwatch: Callable[[], None] = lambda: None
        self._running: dict[bytes, float] = {}  # entry id -> when its handler started
        self._last_id = b"0-0"
        self._cursor = b"0-0"
        self._next_sweep = 0.0
        self._recreated_at = 0.0
        self._acks: Batcher[bytes, None] = Batcher(self._flush_acks, size=256, parallel=2)
        self._metrics = ConsumerMetrics(SYSTEM, subscription.subject, subscription.qos, self.key)

    async def start(self) -> None:
        # A service group starts at the stream's beginning (messages sent before the first
        # instance ran are not lost); a broadcast group only wants what comes from now on.
        await self._create_group("$" if self.broadcast else "0")
        self._loop_task = supervised(self._run(), f"consume {self.name}")
        self._keepalive_task = asyncio.create_task(self._keep_alive(self._claim_idle / 3))
        self._lag_task = asyncio.create_task(self._track_pending())
        self._unwatch = watch_lag(self._lag)

    async def _track_pending(self) -> None:
        """Refresh the group's backlog for `qosmesh.consumer.pending`: entries not yet read by
        the group (XINFO GROUPS `lag`) and read but not acked (`pending`)."""
        while not self._stopping:
            try:
                for group in await self._redis.xinfo_groups(self.key):
                    if _text(group.get("name")) == self.group:
                        self._pending = int(group.get("lag") or 0) + int(group["pending"])
            except Exception as exc:
                log.debug("XINFO GROUPS for %s failed: %s", self.key, exc)
            await asyncio.sleep(consuming.LAG_REFRESH)

    def _lag(self) -> tuple[Attributes, int | None, float]:
        attributes = {"messaging.system": SYSTEM, "consumer": self._sub.name}
        return attributes, self._pending, self._handlers.oldest_unacked()

    async def _create_group(self, start: bytes | str) -> None:
        try:
            await self._redis.xgroup_create(self.key, self.group, id=start, mkstream=True)
        except redis.exceptions.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _recreate_group(self) -> None:
        """The group (or the stream) vanished: create it again from the last entry we saw.
        Entries other members held are lost with the group's pending list."""
        since = time.monotonic() - self._recreated_at
        if since < 1.0:
            await asyncio.sleep(1.0 - since)  # never a hot loop, whatever deletes it
        self._recreated_at = time.monotonic()
        start = self._last_id if self._last_id != b"0-0" else ("$" if self.broadcast else "0")
        await self._create_group(start)
        log.warning("consumer group %s on %s was missing: created again", self.group, self.key)

    # -- the loop ----------------------------------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        while not self._stopping:
            try:
                await self._cycle()
                failures = 0
            except redis.exceptions.ResponseError as exc:
                if "NOGROUP" in str(exc):
                    await self._guard(self._recreate_group())
                    continue
                failures += 1
                log.warning("reading %s failed: %s", self.key, exc)
                await asyncio.sleep(backoff(failures, base=0.2, cap=2.0))
            except BROKER_DOWN as exc:
                failures += 1
                log.warning("reading %s failed (try %d): %s", self.key, failures, exc)
                await asyncio.sleep(backoff(failures, base=0.1, cap=2.0))

    async def _guard(self, step: Any) -> None:
        try:
            await step
        except (*BROKER_DOWN, redis.exceptions.ResponseError) as exc:
            log.warning("recreating group %s failed: %s", self.group, exc)
            await asyncio.sleep(0.5)

    async def _cycle(self) -> None:
        if not self._handlers.has_room():
            await self._handlers.wait_for_room()
            return
        await self._claim_due_retries()
        now = time.monotonic()
        if now >= self._next_sweep and self._handlers.free() > 0:
            more = await self._reclaim(self._handlers.free())
            self._next_sweep = now if more else now + self._claim_idle / 2
        free = self._handlers.free()
        if free <= 0 or self._stopping:
            return
        block = self._settings.redis_block_ms
        if self._retries:
            block = min(block, max(1, int((self._retries[0][0] - now) * 1000)))
        block = min(block, max(1, int((self._next_sweep - now) * 1000)))
        reply: Any = await self._redis.xreadgroup(
            self.group, self.name, {self.key: ">"}, count=min(free, 256), block=block
        )
        for _, entries in reply or []:
            for entry_id, fields in entries:
                self._last_id = entry_id
                self._spawn(entry_id, fields, 1)

    def _spawn(self, entry_id: bytes, fields: Fields, attempt: int) -> None:
        # Kept alive from now: it may wait for a slot before its handler starts.
        self._running[entry_id] = time.monotonic()
        self._handlers.start(self._handle(entry_id, fields, attempt), lambda: self._leave(entry_id))

    async def _leave(self, entry_id: bytes) -> None:
        """It waited for a slot until the stop: left pending for another member to reclaim."""
        self._running.pop(entry_id, None)

    async def _reclaim(self, count: int) -> bool:
        """Take over entries idle for longer than the claim time; True when more may wait."""
        reply = await self._redis.xautoclaim(
            self.key,
            self.group,
            self.name,
            min_idle_time=int(self._claim_idle * 1000),
            start_id=self._cursor,
            count=count,
        )
        self._cursor, live, deleted = parse_autoclaim(reply)
        if deleted:
            # Counted before the XACK: once the server has dropped them, a reader of the pending
            # list must already see them in the counter.
            self._metrics.consumed["trimmed"].add(len(deleted))
            await self._redis.xack(self.key, self.group, *deleted)
            log.warning(
                "%d pending entries of %s were trimmed before delivery", len(deleted), self.key
            )
        if live:
            counts = await self._delivery_counts([entry_id for entry_id, _ in live])
            for entry_id, fields in live:
                self._spawn(entry_id, fields, counts.get(entry_id, 2))
        return self._cursor != b"0-0" and bool(live or deleted)

    async def _delivery_counts(self, ids: list[bytes]) -> dict[bytes, int]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for entry_id in ids:
                pipe.xpending_range(self.key, self.group, entry_id, entry_id, 1)
            replies = await pipe.execute()
        return {r[0]["message_id"]: int(r[0]["times_delivered"]) for r in replies if r}

    async def _claim_due_retries(self) -> None:
        """Claim back, for another try, the failed entries whose backoff has passed: each only
        while it is still this member's, checked and claimed in one step on the server."""
        now = time.monotonic()
        due: list[bytes] = []
        while self._retries and self._retries[0][0] <= now and len(due) < self._handlers.free():
            due.append(heapq.heappop(self._retries)[1])
        if not due:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for entry_id in due:
                await self._retry_claim(
                    keys=[self.key], args=[self.group, self.name, entry_id], client=pipe
                )
            replies = await pipe.execute()
        for entry_id, reply in zip(due, replies, strict=True):
            state = int(reply[0])
            if state == _MINE:
                fields = dict(zip(reply[2][::2], reply[2][1::2], strict=True))
                self._spawn(entry_id, fields, int(reply[1]))
            elif state == _TRIMMED:
                # Trimmed while it waited for its retry: nobody can deliver it any more.
                self._metrics.consumed["trimmed"].add(1)
                await self._redis.xack(self.key, self.group, entry_id)
            # else: settled meanwhile, or another member reclaimed it: theirs now.

    # -- one delivery --------------------------------------------------------------------------

    async def _handle(self, entry_id: bytes, fields: Fields, attempt: int) -> None:
        max_deliver = self._settings.max_deliver
        envelope = envelope_from(fields, self.key)
        settlement = _Settlement(self, entry_id, fields, attempt)
        if attempt > max_deliver + DELIVERY_MARGIN:
            self._running.pop(entry_id, None)
            settlement.deliveries = attempt - 1
            await settle(settlement, GIVEN_UP, self._metrics)
            return
        delivery = Delivery("redis", self.key, attempt, max_deliver, envelope.message_id)
        if attempt > 1:
            self._metrics.redelivered.add()
        started = time.perf_counter()
        try:
            outcome = await run_delivery(
                self._sub.handler,
                envelope,
                delivery,
                lambda: self._stopping,
                self._claim_idle * HOLD_CLAIM_IDLES,
            )
        finally:  # cancelled: left pending, another member reclaims it after the claim time
            self._running.pop(entry_id, None)
            self._metrics.durations.record(time.perf_counter() - started)
        if outcome.verdict is Verdict.RETRY:
            log.info("handler failed for %s (try %d)", envelope.message_id, attempt)
        await settle(settlement, outcome, self._metrics)

    def retry_later(self, entry_id: bytes, delay: float) -> None:
        # The keep-alive sweep keeps it this member's until then (no other reclaims it).
        heapq.heappush(self._retries, (time.monotonic() + delay, entry_id))
        self._handlers.wake()

    async def _keep_alive(self, every: float) -> None:
        """Every `every` seconds, reset the idle time of the entries whose handlers have run
        that long, so no other member reclaims them meanwhile: one sweep per consumer instead
        of a timer per delivery. An entry is touched before it has been idle 2 * `every`."""
        while True:  # through the drain too: cancelled once the last handler has ended
            await asyncio.sleep(every)
            now = time.monotonic()
            ids = [i for i, started in list(self._running.items()) if now - started >= every]
            ids += [entry_id for _, entry_id in self._retries]  # waiting for their retry
            if ids:
                await self._touch(ids)

    async def _touch(self, ids: list[Any]) -> None:
        try:
            await self._keep_mine(keys=[self.key], args=[self.group, self.name, *ids])
        except Exception as exc:
            log.debug("keep-alive for %d entries of %s failed: %s", len(ids), self.key, exc)

    async def _flush_acks(self, ids: list[bytes]) -> list[None]:
        await self._redis.xack(self.key, self.group, *ids)
        return [None] * len(ids)

    async def ack(self, entry_id: bytes) -> None:
        """XACK, sent together with the acks of handlers that finish meanwhile."""
        try:
            await self._acks.submit(entry_id)
        except Exception as exc:
            # Still pending: it is reclaimed and handled again, as QoS 1 allows.
            log.warning("could not ack %s on %s: %s", entry_id, self.key, exc)

    async def dead_letter(
        self, entry_id: bytes, fields: Fields, failure: Failure, deliveries: int
    ) -> None:
        try:
            await self._dlq.add(
                fields,
                subject=self.key,
                entry=entry_id,
                group=self.group,
                consumer=self.name,
                failure=failure,
                deliveries=deliveries,
            )
        except Exception:
            # Still pending: reclaimed after the claim time and dead-lettered then.
            log.exception("dead-letter copy of %s failed", entry_id)

    async def stop(self, timeout: float) -> None:
        """Stop reading, give in-flight handlers `timeout` seconds; the rest stay pending."""
        self._stopping = True
        self._handlers.wake()
        self._unwatch()
        if self._lag_task is not None:
            self._lag_task.cancel()
        if self._loop_task is not None:
            _, pending = await asyncio.wait(
                {self._loop_task}, timeout=self._settings.redis_block_ms / 1000 + 0.5
            )
            for task in pending:
                task.cancel()
                await asyncio.wait({task}, timeout=2)
        # Handlers still running keep their entries fresh until they end: an entry left idle
        # past the claim time would be reclaimed by another member while this one applies it.
        await self._handlers.drain(timeout)
        if self._keepalive_task is not None:
            self._keepalive_task.cancel()
        await self._acks.close()
        if self.broadcast:
            # This instance's own group: nobody else will read it.
            try:
                await self._redis.xgroup_destroy(self.key, self.group)
            except Exception as exc:
                log.debug("could not remove group %s: %s", self.group, exc)


class _Settlement:
    """One Redis Streams delivery as the router settles it."""

    __slots__ = ("_consumer", "_entry_id", "_fields", "deliveries")

    def __init__(self, consumer: RedisConsumer, entry_id: bytes, fields: Fields, attempt: int):
        self._consumer = consumer
        self._entry_id = entry_id
        self._fields = fields
        self.deliveries = attempt

    async def ack(self) -> None:
        await self._consumer.ack(self._entry_id)

    async def nak(self, delay: float) -> None:
        self._consumer.retry_later(self._entry_id, delay)

    async def dead_letter(self, failure: Failure) -> None:
        await self._consumer.dead_letter(self._entry_id, self._fields, failure, self.deliveries)
