"""The JetStream pull consumer: durable, explicit ack, its own pull requests.

Ack after the handler returns, nak with a growing delay when it raises, term (after a
dead-letter copy) when it can never succeed. It asks for as many messages as it has free
handler slots and reads how each request ended from the server's status messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable
from datetime import UTC, datetime

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
)

from app.brokers import nats_wire
from app.messages import Envelope
from app.observability.instruments import Attributes, consumer_gaps, watch_lag
from app.qos.dead_letters import Failure
from app.qos.retries import backoff
from app.settings import Settings
from app.supervision import supervised
from app.transports import consuming
from app.transports.base import Delivery, Subscription
from app.transports.consuming import (
    DELIVERY_MARGIN,
    ConsumerMetrics,
    HandlerTasks,
    Outcome,
    Verdict,
    run_delivery,
    settle,
)
from app.transports.jetstream import SYSTEM
from app.transports.jetstream.dead_letters import JetStreamDeadLetters

log = logging.getLogger(__name__)

PULL_EXPIRES = 2.0  # a pull request's life; also how soon pulling resumes after a reconnect
PULL_GRACE = 0.5
MAX_BATCH = 256
HOLD_ACK_WAITS = 3  # a busy QoS 2 claim goes stale after one ack wait: held past that
COPY_RETRY = 1.0  # the first delay after a failed dead-letter copy, doubling each delivery
COPY_RETRY_CAP = 60.0
UNCOPIED_KEPT = 1024


class PullConsumer:
    """One durable pull consumer feeding a handler with bounded concurrency.

    Pull requests ask for as many messages as there are free handler slots (at least a quarter
    of them at a time); the messages arrive on this consumer's inbox and each starts its handler
    at once. nats-py's `fetch` waits for every message in turn, which costs more than the rest
    of a delivery.
    """

    def __init__(
        self,
        nc: NatsClient,
        js: JetStreamContext,
        stream: str,
        subscription: Subscription,
        settings: Settings,
        dlq: JetStreamDeadLetters,
    ) -> None:
        self._nc = nc
        self._js = js
        self._stream = stream
        self._sub = subscription
        self._settings = settings
        self._dlq = dlq
        self._inbox = nc.new_inbox()
        self._next = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{subscription.name}"
        self._requested = 0  # messages asked for and not yet arrived
        self._settling: set[asyncio.Future[None]] = set()  # naks of messages come after a stop
        self._requests_end = 0.0  # by then every request has been answered or has expired
        self._missing = False  # the server says the consumer is gone: create it again
        self._missing_since = 0.0
        self._last_seq = 0  # the highest stream sequence delivered to this instance
        self._handlers = HandlerTasks(settings.consumer_concurrency, lambda: self._requested)
        self._stopping = False
        self._loop_task: asyncio.Task[None] | None = None
        self._keepalive_task: asyncio.Task[None] | None = None
        # id(delivery) -> (delivery, when its handler started); a Msg is not hashable
        self._running: dict[int, tuple[Msg, float]] = {}
        # Why a message whose dead-letter copy failed was dead, by stream sequence: its
        # deliveries past the limit copy it again with that reason, not "no result".
        self._uncopied: dict[int, Failure] = {}
        self._pending: int | None = None  # until the first read
        self._metrics = ConsumerMetrics(
            SYSTEM, subscription.subject, subscription.qos, subscription.subject
        )

    def config(self) -> ConsumerConfig:
        broadcast = self._sub.group is None
        return ConsumerConfig(
            durable_name=self._sub.name,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self._settings.ack_wait,
            # The router dead-letters a handler failing at APP_MAX_DELIVER; the server's count
            # runs further, so deliveries lost to a crash or an outage do not end in a dead
            # letter by themselves. Past it, the MAX_DELIVERIES advisory dead-letters.
            max_deliver=self._settings.max_deliver + DELIVERY_MARGIN,
            filter_subject=self._sub.subject,
            max_ack_pending=max(1000, self._handlers.limit * 4),
            deliver_policy=DeliverPolicy.NEW if broadcast else DeliverPolicy.ALL,
            inactive_threshold=max(60.0, self._settings.ack_wait * 6) if broadcast else None,
            num_replicas=self._settings.replicas,
        )

    async def start(self) -> None:
        await self._js.add_consumer(self._stream, self.config())
        self._inbox_sub = await self._nc.subscribe(self._inbox, cb=self._on_message)
        nats_wire.deliver_directly(self._inbox_sub, self._deliver)
        self._loop_task = supervised(self._run(), f"consume {self._sub.name}")
        self._pending_task = asyncio.create_task(self._track_pending())
        self._keepalive_task = asyncio.create_task(self._keep_alive(self._settings.ack_wait / 3))
        self._unwatch = watch_lag(self._lag)

    async def _track_pending(self) -> None:
        """Refresh the waiting + unacked count for the `qosmesh.consumer.pending` gauge."""
        while not self._stopping:
            try:
                info = await self._js.consumer_info(self._stream, self._sub.name)
                self._pending = info.num_pending + info.num_ack_pending
            except Exception as exc:
                log.debug("consumer info for %s failed: %s", self._sub.name, exc)
            await asyncio.sleep(consuming.LAG_REFRESH)

    def _lag(self) -> tuple[Attributes, int | None, float]:
        attributes = {"messaging.system": SYSTEM, "consumer": self._sub.name}
        return attributes, self._pending, self._handlers.oldest_unacked()

    async def _run(self) -> None:
        while not self._stopping:
            now = time.monotonic()
            if self._requested and now > self._requests_end:
                self._requested = 0  # expired; or lost with a connection or a server restart
            if self._missing:
                await self._recreate()
                continue
            if not self._handlers.has_room():
                await self._handlers.wait_for_room(PULL_EXPIRES)
                continue
            if not self._nc.is_connected:
                # nats-py would buffer the request and send it after the reconnect, on top of
                # the ones asked then: more messages than free slots.
                await asyncio.sleep(PULL_GRACE)
                continue
            batch = min(self._handlers.free(), MAX_BATCH)
            request = {"batch": batch, "expires": int(PULL_EXPIRES * 1e9)}
            try:
                await self._nc.publish(self._next, json.dumps(request).encode(), self._inbox)
            except Exception as exc:
                if self._stopping:
                    return
                log.warning("pull request on %s failed: %s", self._sub.name, exc)
                await asyncio.sleep(0.5)
                continue
            self._requested += batch
            self._requests_end = now + PULL_EXPIRES + PULL_GRACE

    async def _on_message(self, msg: Msg) -> None:
        self._deliver(msg)

    def _deliver(self, msg: Msg) -> None:
        """A message or a pull status, as nats-py's read loop hands it over: nothing here
        waits (a handler runs in its own task)."""
        if not msg.reply:
            self._on_status(msg.headers or {})
            return
        self._requested = max(0, self._requested - 1)
        if self._stopping:
            # Asked for before the stop: back to the other instances. Not at once: this
            # instance's request stays open at the server until it expires, and the message
            # would come straight back to it, around the loop until its deliveries ran out.
            naking = asyncio.ensure_future(_settle(msg.nak(delay=self._requests_left())))
            self._settling.add(naking)
            naking.add_done_callback(self._settling.discard)
            return
        # Kept alive from its arrival: it may wait for a slot before its handler starts.
        self._running[id(msg)] = (msg, time.monotonic())
        self._handlers.start(self._handle(msg), lambda: self._give_back(msg))

    async def _give_back(self, msg: Msg) -> None:
        """It waited for a slot until the stop: back to the other instances, once this
        instance's open requests have expired."""
        self._running.pop(id(msg), None)
        await _settle(msg.nak(delay=self._requests_left()))

    def _requests_left(self) -> float:
        """Seconds until the last pull request this instance sent expires at the server."""
        return max(0.0, self._requests_end - time.monotonic())

    def _on_status(self, headers: dict[str, str]) -> None:
        """A request ended early: 408 (expired) and 409 (dropped) say how many of its messages
        will not come; 503 (no responders) and 409 'Consumer Deleted' mean the consumer is gone."""
        status = headers.get("Status", "")
        left = headers.get("Nats-Pending-Messages", "")
        if left.isdigit():
            self._requested = max(0, self._requested - int(left))
        gone = status == "503" or "deleted" in headers.get("Description", "").lower()
        if gone and not self._missing:
            self._missing_since = time.time()
        if gone and not self._stopping:
            self._requested = 0
            self._missing = True
        elif status not in ("404", "408"):
            log.info("pull on %s: %s %s", self._sub.name, status, headers.get("Description", ""))
        self._handlers.wake()

    async def _recreate(self) -> None:
        """The server said the consumer is gone. It may only have been unreachable (its
        stream electing a leader answers 503 too): then it is used as it is. If it was
        deleted, it is created again where it stopped: from the oldest sequence this instance
        holds unacked, else the one after the last it was given; a gap (the stream dropped
        those meanwhile) is counted and logged. Knowing neither, from shortly before the
        deletion was noticed: never the whole stream again."""
        await asyncio.sleep(0.5)
        try:
            if await self._exists():
                self._missing = False
                return
            where = await self._create_where_it_stopped()
        except Exception as exc:  # tried again on the next turn of the loop
            log.warning("consumer %s is gone and cannot be created: %s", self._sub.name, exc)
            return
        log.warning("consumer %s was gone: created again %s", self._sub.name, where)
        self._missing = False

    async def _exists(self) -> bool:
        try:
            await self._js.consumer_info(self._stream, self._sub.name)
        except nats.js.errors.NotFoundError:
            return False
        return True

    async def _create_where_it_stopped(self) -> str:
        config = self.config()
        running = [_stream_seq(msg) for msg, _ in self._running.values()]
        start = min([seq for seq in running if seq], default=self._last_seq + 1)
        if self._last_seq or running:
            first = (await self._js.stream_info(self._stream)).state.first_seq
            if first > start:
                self._gap(start, first)
                start = first
            config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
            config.opt_start_seq = start
            where = f"from sequence {start}"
        else:
            since = self._missing_since - self._settings.ack_wait - PULL_EXPIRES
            config.deliver_policy = DeliverPolicy.BY_START_TIME
            config.opt_start_time = datetime.fromtimestamp(since, UTC)
            where = f"from {config.opt_start_time.isoformat()}"
        await self._js.add_consumer(self._stream, config)
        return where

    def _gap(self, start: int, first: int) -> None:
        lost = first - start
        consumer_gaps.add(lost, {"messaging.system": SYSTEM, "consumer": self._sub.name})
        log.error(
            "consumer %s created again after its stream dropped sequences %d-%d: %d messages "
            "were never delivered to it",
            self._sub.name,
            start,
            first - 1,
            lost,
        )

    async def _handle(self, msg: Msg) -> None:
        attempt = _delivery_count(msg)
        self._last_seq = max(self._last_seq, _stream_seq(msg))
        envelope = Envelope(headers=dict(msg.headers or {}), body=msg.data, subject=msg.subject)
        settings = self._settings
        delivery = Delivery(
            "jetstream", msg.subject, attempt, settings.max_deliver, envelope.message_id
        )
        settlement = _Settlement(self, msg, envelope, attempt)
        failure = self._uncopied.get(_stream_seq(msg))
        if failure is not None:
            # Judged dead by an earlier delivery, whose copy to the dead-letter stream failed.
            self._running.pop(id(msg), None)
            await settle(settlement, Outcome(Verdict.DEAD, failure=failure), self._metrics)
            return
        if attempt > 1:
            self._metrics.redelivered.add()
        started = time.perf_counter()
        try:
            outcome = await run_delivery(
                self._sub.handler,
                envelope,
                delivery,
                lambda: self._stopping,
                settings.ack_wait * HOLD_ACK_WAITS,
            )
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await msg.nak()
            self._metrics.consumed["nak"].add(1)
            raise
        finally:
            self._running.pop(id(msg), None)
            self._metrics.durations.record(time.perf_counter() - started)
        if outcome.verdict is Verdict.RETRY:
            log.info("handler failed for %s (try %d)", envelope.message_id, attempt)
        await settle(settlement, outcome, self._metrics)

    async def _keep_alive(self, every: float) -> None:
        """Every `every` seconds, tell the server that the handlers running that long are still
        working, so their deliveries are not redelivered: one sweep per consumer instead of a
        timer per delivery. A delivery hears from us before ack_wait * 2/3 has passed."""
        while True:  # through the drain too: cancelled once the last handler has ended
            await asyncio.sleep(every)
            now = time.monotonic()
            for msg, started in list(self._running.values()):
                if now - started >= every:
                    await _settle(msg.in_progress())

    async def dead_letter(
        self,
        msg: Msg,
        envelope: Envelope,
        failure: Failure,
        attempt: int,
    ) -> None:
        """Copy to the dead-letter stream, then term. A copy that fails (a broker away, a full
        store that keeps what it holds) hands the delivery back after a growing delay, never at
        once; past its deliveries the server's MAX_DELIVERIES advisory tries the copy again."""
        seq = msg.metadata.sequence.stream
        try:
            await self._dlq.add(
                envelope,
                stream=self._stream,
                seq=seq,
                consumer=self._sub.name,
                failure=failure,
                deliveries=attempt,
            )
        except Exception as exc:
            delay = backoff(attempt, base=COPY_RETRY, cap=COPY_RETRY_CAP)
            log.error(
                "dead-letter copy of %s failed; tried again in %.0f s: %s",
                envelope.message_id,
                delay,
                exc,
            )
            if len(self._uncopied) >= UNCOPIED_KEPT:
                self._uncopied.pop(next(iter(self._uncopied)))
            self._uncopied[seq] = failure
            await _settle(msg.nak(delay=delay))
            return
        self._uncopied.pop(seq, None)
        await _settle(msg.term())

    async def stop(self, timeout: float) -> None:
        """Stop fetching, give in-flight handlers `timeout` seconds, nak the rest."""
        self._stopping = True
        self._handlers.wake()
        self._unwatch()
        self._pending_task.cancel()
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.wait({self._loop_task}, timeout=2)
        # Handlers still running keep their deliveries in progress until they end: a delivery
        # left to its ack_wait would go to another instance while this one still applies it.
        await self._handlers.drain(timeout)
        if self._keepalive_task is not None:
            self._keepalive_task.cancel()
        # Messages of a request still open after this are redelivered once ack_wait has passed.
        with contextlib.suppress(Exception):
            await self._inbox_sub.unsubscribe()


class _Settlement:
    """One JetStream delivery as the router settles it."""

    __slots__ = ("_attempt", "_consumer", "_envelope", "_msg")

    def __init__(self, consumer: PullConsumer, msg: Msg, envelope: Envelope, attempt: int) -> None:
        self._consumer = consumer
        self._msg = msg
        self._envelope = envelope
        self._attempt = attempt

    async def ack(self) -> None:
        await _settle(self._msg.ack())

    async def nak(self, delay: float) -> None:
        await _settle(self._msg.nak(delay=delay))

    async def dead_letter(self, failure: Failure) -> None:
        await self._consumer.dead_letter(self._msg, self._envelope, failure, self._attempt)


def _stream_seq(msg: Msg) -> int:
    """The delivery's stream sequence: the sixth token of a v1 ack subject, read directly; any
    other form (the v2 subject with a domain and an account hash) through nats-py's metadata,
    which parses both; 0 when the reply is no ack subject at all."""
    tokens = (msg.reply or "").split(".")
    if len(tokens) == 9 and tokens[0] == "$JS" and tokens[1] == "ACK":
        return int(tokens[5])
    try:
        return int(msg.metadata.sequence.stream)
    except Exception:  # not an ack subject: nothing to resume from
        return 0


def _delivery_count(msg: Msg) -> int:
    """`msg.metadata.num_delivered` without the rest of the metadata (a datetime and two
    dataclasses per delivery): the fifth token of a v1 ack subject,
    `$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>`;
    other forms are left to nats-py."""
    tokens = (msg.reply or "").split(".")
    if len(tokens) == 9 and tokens[0] == "$JS" and tokens[1] == "ACK":
        return int(tokens[4])
    return msg.metadata.num_delivered


async def _settle(reply: Awaitable[None]) -> None:
    """Send an ack, nak or term; when the connection is gone the server redelivers anyway."""
    try:
        await reply
    except Exception as exc:
        log.warning("could not settle a delivery: %s", exc)
