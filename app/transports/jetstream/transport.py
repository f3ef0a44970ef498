"""QoS 1 and 2 on NATS JetStream: persisted, acknowledged, retried, dead-lettered.

Publishing waits for the stream's PubAck (acks.py) and retries within the budget; every publish
carries `Nats-Msg-Id` = message id, so a retry after a lost ack is dropped by the broker's
dedupe window. Consumers are durable pull consumers with explicit ack (consumer.py).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from app.brokers.clock import ServerClock, nats_time
from app.errors import ConfigurationError, InvalidMessageError, MessageTooLargeError
from app.messages import Envelope, QoS
from app.observability.instruments import dedupe_hits, sent_series
from app.qos.retries import RetryBudget, publish_reliably
from app.settings import Settings
from app.transports.base import Subscription
from app.transports.jetstream import SYSTEM
from app.transports.jetstream.acks import AckReplies, pub_ack
from app.transports.jetstream.consumer import PullConsumer
from app.transports.jetstream.dead_letters import JetStreamDeadLetters
from app.transports.jetstream.schedules import (
    FallbackSchedules,
    NativeSchedules,
    Send,
    native_supported,
    schedule_subjects,
)
from app.transports.jetstream.streams import ensure_stream, stream_name

MSG_ID = "Nats-Msg-Id"
STREAM_MAX_AGE = 7 * 24 * 3600.0
RETRYABLE = (nats.errors.Error, TimeoutError, OSError)

REFUSED_FOR_GOOD = {
    10165: "invalid per-message TTL",
    10189: "invalid message schedule",
    10190: "invalid message schedule target",
    10191: "invalid per-message TTL on a schedule",
}
"""The JetStream API errors a publish meets again on every try of the same message, whatever
the stream's state (err_code -> what it means): the message's own headers are refused, so it is
refused as it is (InvalidMessageError). Every other API error may pass and is retried within the
budget: a leader election, a full stream, a message over the stream's max_msg_size (an operator
may raise it) (tests/transports/test_schedules.py)."""
MAX_DELAY = STREAM_MAX_AGE - 3600.0
"""The longest delay the server's schedules take: a schedule is a message of the stream, gone
at its max age (an hour's margin for clocks and the publish itself)."""


class JetStreamTransport:
    name = "jetstream"

    def __init__(self, nc: NatsClient, js: JetStreamContext, settings: Settings) -> None:
        self._nc = nc
        self._js = js
        self._settings = settings
        self._budget = RetryBudget.from_settings(settings)
        self._acks = AckReplies(nc)
        self._dlq = JetStreamDeadLetters(nc, js, settings, self.publish)
        self._streams: dict[str, asyncio.Task[None]] = {}
        self._subscriptions: list[Subscription] = []
        self._consumers: list[PullConsumer] = []
        self._schedules: NativeSchedules | FallbackSchedules
        # The server's time, read off its answers about this service's dead-letter stream
        # (one that every instance with this transport has).
        clock = ServerClock(nats_time(nc, lambda: self._dlq.stream))
        if settings.scheduler != "fallback" and native_supported(nc):
            self._schedules = NativeSchedules(
                nc, js, self._publish_via, self._send_to, self._streams_in_use, MAX_DELAY, clock
            )
        else:
            if settings.scheduler == "native":
                raise ConfigurationError(
                    "APP_SCHEDULER=native needs nats-server 2.12 or later (message schedules); "
                    f"this one is {nc.connected_server_version}"
                )
            self._schedules = FallbackSchedules(
                nc, js, settings, self._publish_via, self._send_to, self.publish, clock
            )

    def stream_config(self, subject: str) -> StreamConfig:
        native = self._schedules.native
        return StreamConfig(
            name=stream_name(subject),
            # With the server's schedules, each delayed message has a subject of its own.
            subjects=[subject, schedule_subjects(subject)] if native else [subject],
            allow_msg_schedules=True if native else None,
            storage=StorageType.FILE,
            retention=RetentionPolicy.LIMITS,
            discard=DiscardPolicy.OLD,
            num_replicas=self._settings.replicas,
            duplicate_window=self._settings.duplicate_window,
            max_age=STREAM_MAX_AGE,
            allow_direct=True,
        )

    async def ensure(self, subject: str) -> str:
        """Make sure the stream for `subject` exists (once per process); return its name."""
        task = self._streams.get(subject)
        if task is None or (task.done() and task.exception() is not None):
            task = asyncio.ensure_future(ensure_stream(self._js, self.stream_config(subject)))
            self._streams[subject] = task
        await asyncio.shield(task)
        return stream_name(subject)

    @property
    def dead_letters(self) -> JetStreamDeadLetters:
        return self._dlq

    @property
    def schedules(self) -> NativeSchedules | FallbackSchedules:
        return self._schedules

    def _streams_in_use(self) -> dict[str, str]:
        return {
            subject: stream_name(subject)
            for subject, task in self._streams.items()
            if task.done() and task.exception() is None
        }

    async def start(self) -> None:
        await self._dlq.start()
        for subscription in self._subscriptions:
            stream = await self.ensure(subscription.subject)
            consumer = PullConsumer(
                self._nc, self._js, stream, subscription, self._settings, self._dlq
            )
            await consumer.start()
            self._consumers.append(consumer)

    async def subscribe(self, subscription: Subscription) -> None:
        self._subscriptions.append(subscription)

    async def publish(self, envelope: Envelope, qos: QoS, first: int = 1) -> None:
        await publish_reliably(
            envelope,
            qos,
            lambda attempt, timeout: self._send(envelope, attempt, timeout),
            self._budget,
            RETRYABLE,
            SYSTEM,
            first,
        )

    async def publish_rest(self, envelope: Envelope, qos: QoS) -> None:
        await self.publish(envelope, qos, first=2)

    async def first_attempts(
        self, envelopes: Sequence[Envelope], qos: QoS, window: int
    ) -> list[Envelope]:
        """Back to back, up to `window` PubAcks awaited at once, with no coroutine per message
        (what `js.publish_async` does); returns the envelopes not confirmed."""
        for subject in {envelope.subject for envelope in envelopes}:
            await self._stream_ready(subject)
        timeout = self._budget.attempt_timeout
        inflight: deque[tuple[Envelope, str, asyncio.Future[Msg]]] = deque()
        again: list[Envelope] = []
        try:
            for envelope in envelopes:
                if len(inflight) >= window:
                    await self._confirm(*inflight.popleft(), qos, again)
                headers = {MSG_ID: envelope.message_id, **envelope.headers}
                try:
                    token, future = await self._acks.send_publish(
                        envelope.subject, envelope.body, headers, timeout
                    )
                except (*RETRYABLE, MessageTooLargeError):  # publish says why, for each
                    again.append(envelope)
                    continue
                inflight.append((envelope, token, future))
            while inflight:
                await self._confirm(*inflight.popleft(), qos, again)
        finally:
            # Cancelled halfway: the acks still awaited are not waited for any more.
            for _, token, future in inflight:
                self._acks.forget(token)
                future.cancel()
        return again

    async def _confirm(
        self,
        envelope: Envelope,
        token: str,
        future: asyncio.Future[Msg],
        qos: QoS,
        again: list[Envelope],
    ) -> None:
        try:
            ack = pub_ack(await future)
        except RETRYABLE:
            again.append(envelope)
            return
        finally:
            self._acks.forget(token)
        if "error" in ack:
            again.append(envelope)
            return
        if ack.get("duplicate"):
            dedupe_hits.add(1, {"side": "publisher"})
        sent_series(SYSTEM, envelope.subject, qos, "ok").add()

    async def _stream_ready(self, subject: str) -> None:
        task = self._streams.get(subject)
        if task is None or not task.done() or task.exception() is not None:
            await self.ensure(subject)

    async def _send(self, envelope: Envelope, attempt: int, timeout: float) -> None:
        headers = {MSG_ID: envelope.message_id, **envelope.headers}
        await self._send_to(envelope, envelope.subject, headers, timeout)

    async def _send_to(
        self, envelope: Envelope, subject: str, headers: dict[str, str], timeout: float
    ) -> None:
        """One attempt to publish `envelope`'s body on `subject`, its stream ready first."""
        await self._stream_ready(envelope.subject)
        try:
            ack = await self._acks.publish(subject, envelope.body, headers, timeout)
        except nats.errors.NoRespondersError:
            self._streams.pop(envelope.subject, None)  # the stream is gone: create it again
            raise
        if "error" in ack:
            raise _refusal(ack["error"])
        if ack.get("duplicate"):
            dedupe_hits.add(1, {"side": "publisher"})

    async def _publish_via(self, envelope: Envelope, qos: QoS, send: Send) -> None:
        """`publish`, each attempt made by `send` (with the headers `publish` would send)."""
        headers = {MSG_ID: envelope.message_id, **envelope.headers}
        await publish_reliably(
            envelope,
            qos,
            lambda attempt, timeout: send(envelope, envelope.subject, headers, timeout),
            self._budget,
            RETRYABLE,
            SYSTEM,
        )

    async def stop(self, timeout: float) -> None:
        await asyncio.gather(*(c.stop(timeout) for c in self._consumers))
        self._consumers.clear()
        await self._dlq.stop()


def _refusal(error: dict[str, Any]) -> Exception:
    """A PubAck's error as the exception to raise: InvalidMessageError when no retry can
    succeed, else the API error (nats-py's class for its code), retried within the budget."""
    meaning = REFUSED_FOR_GOOD.get(error.get("err_code") or 0)
    if meaning is not None:
        return InvalidMessageError(
            f"refused by the stream: {meaning} ({error.get('description', '')})"
        )
    try:
        nats.js.errors.APIError.from_error(error)  # raises the subclass for its code
    except nats.js.errors.APIError as exc:
        return exc
    return nats.js.errors.APIError(**error)
