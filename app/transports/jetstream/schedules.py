"""Delayed messages on JetStream: the server's message schedules (ADR-51, nats-server 2.12+),
or, on older servers or with APP_SCHEDULER=fallback, a stream of due messages the lease holder
publishes when their time comes.

**Schedules.** A delayed message of subject `S` is a message on `S.sched.<id>` in S's stream,
with `Nats-Schedule: @at <time>` and `Nats-Schedule-Target: S`. There is one schedule per
subject, hence a subject per message; consumers filter on `S` and never see the schedules. At
its time the server puts a copy on `S` (the qm-* headers kept, `Nats-Msg-Id` dropped) and
removes the schedule; purging `S.sched.<id>` cancels it. Times are given to the millisecond,
rounded up, so a message never fires early.

**Fallback.** A delayed message is kept on `qm-scheduled.<service>.<token>` (a hash of its
subject and id) in the stream
`QM_SCHEDULED_<SERVICE>`, the target subject in a header. The holder of the lease
`scheduler-jetstream` follows that stream (headers only), keeps the due times in a heap, and
publishes each message when due, with its message id as `Nats-Msg-Id` (the target stream drops
a second copy if a holder died between the publish and the removal), then removes it. A fire
and a cancel compete by compare-and-set on the message's subject: the holder first replaces
the schedule with a copy marked `qm-firing`, a cancel with a tombstone, each only if the
schedule is still the subject's last message; whoever comes second backs off.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.client import JetStreamContext

from app.brokers.clock import ServerClock
from app.errors import InvalidMessageError
from app.messages import H_DELIVER_AT, H_QOS, Envelope, QoS, due_of
from app.settings import Settings
from app.transports.jetstream.streams import ensure_stream, stream_name

if TYPE_CHECKING:
    from nats.aio.client import Client as NatsClient
    from nats.aio.subscription import Subscription as NatsSubscription

log = logging.getLogger(__name__)

SCHEDULE = "Nats-Schedule"
SCHEDULE_TARGET = "Nats-Schedule-Target"
TARGET = "qm-target"
NATIVE_SINCE = (2, 12)
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
REQUEST_TIMEOUT = 2.0
FIRING = "qm-firing"
CANCELLED = "qm-cancelled"
EXPECTED_LAST = "Nats-Expected-Last-Subject-Sequence"
WRONG_LAST_SEQUENCE = 10071
UNFOLLOW_AFTER = 10.0  # seconds without a move: this instance no longer holds the lease
MSG_ID = "Nats-Msg-Id"
CANCEL_MARGIN = 0.1
"""Seconds a purged schedule must still have had to go, by the server's clock as this instance
reads it, for a cancel to promise it never fires (the reading's error is far below this)."""

Send = Callable[[Envelope, str, dict[str, str], float], Awaitable[None]]
"""Publish `envelope` on a subject with extra headers within a timeout (one attempt)."""


def schedule_token(message_id: str) -> str:
    """The subject token of a message id: itself when it is a safe token, else its hash."""
    if _TOKEN.match(message_id):
        return message_id
    return hashlib.sha256(message_id.encode()).hexdigest()[:40]


def schedule_subject(subject: str, message_id: str) -> str:
    return f"{subject}.sched.{schedule_token(message_id)}"


def schedule_subjects(subject: str) -> str:
    """Every schedule of `subject`, as a wildcard: the stream holds them beside it."""
    return f"{subject}.sched.*"


def fallback_prefix(service: str) -> str:
    """Where the fallback keeps a service's delayed messages, one subject below it each."""
    return f"qm-scheduled.{service}"


def fallback_stream(service: str) -> str:
    return stream_name(f"qm-scheduled-{service}")


def native_supported(nc: NatsClient) -> bool:
    version = nc.connected_server_version
    return (version.major, version.minor) >= NATIVE_SINCE


async def purge(nc: NatsClient, stream: str, subject: str) -> int:
    """Purge `subject` from `stream`: how many messages went (nats-py says only success)."""
    request = json.dumps({"filter": subject}).encode()
    reply = await nc.request(f"$JS.API.STREAM.PURGE.{stream}", request, REQUEST_TIMEOUT)
    answer = json.loads(reply.data)
    if "error" in answer:
        raise nats.js.errors.APIError.from_error(answer["error"])
    return int(answer.get("purged", 0))


class NativeSchedules:
    """ADR-51 message schedules: the server fires them."""

    native = True

    def __init__(
        self,
        nc: NatsClient,
        js: JetStreamContext,
        publish: Callable[[Envelope, QoS, Send], Awaitable[None]],
        send: Send,
        streams: Callable[[], dict[str, str]],
        max_delay: float,
        clock: ServerClock,
    ) -> None:
        self.max_delay: float | None = max_delay
        self._clock = clock
        self._nc = nc
        self._js = js
        self._publish = publish
        self._send = send
        self._streams = streams  # subject -> stream name, of the streams in use

    async def now(self) -> datetime:
        return await self._clock.now()

    async def schedule(self, envelope: Envelope, qos: QoS, due: datetime) -> None:
        if (
            self.max_delay is not None
            and (due - await self._clock.now()).total_seconds() > self.max_delay
        ):
            days = self.max_delay / 86400
            raise InvalidMessageError(
                f"a delay beyond {days:g} days outlives the stream's max age: the server would "
                "drop the message before it fires (keep it shorter, or use Redis)"
            )
        at = envelope.headers[H_DELIVER_AT]
        extra = {SCHEDULE: f"@at {at}", SCHEDULE_TARGET: envelope.subject}
        subject = schedule_subject(envelope.subject, envelope.message_id)

        async def send(envelope: Envelope, _: str, headers: dict[str, str], timeout: float) -> None:
            await self._send(envelope, subject, {**headers, **extra}, timeout)

        await self._publish(envelope, qos, send)

    async def cancel(self, subject: str, message_id: str) -> bool:
        """True only when the purge took the schedule before its time. The server fires a due
        schedule and removes it in two steps, so a purge landing between them still removes
        it after the copy went out (a broker frozen past the due time makes that likely): a
        schedule whose time had come by the purge's answer, on the server's clock, is purged
        but not promised."""
        stream, target = stream_name(subject), schedule_subject(subject, message_id)
        try:
            kept = await self._js.get_msg(stream, subject=target)
        except nats.js.errors.NotFoundError:
            return False
        due = due_of(kept.headers or {})
        if await purge(self._nc, stream, target) == 0:
            return False
        answered = await self._clock.now()
        return due is not None and (due - answered).total_seconds() > CANCEL_MARGIN

    async def backlog(self) -> int:
        total = 0
        for subject, stream in self._streams().items():
            info = await self._js.stream_info(stream, subjects_filter=schedule_subjects(subject))
            total += len(info.state.subjects or {})
        return total

    async def move_due(self, token: int) -> None:
        return None  # the server fires them


class FallbackSchedules:
    """Due messages kept in a stream of their own, published by the lease holder."""

    native = False
    max_delay: float | None = None

    def __init__(
        self,
        nc: NatsClient,
        js: JetStreamContext,
        settings: Settings,
        publish: Callable[[Envelope, QoS, Send], Awaitable[None]],
        send: Send,
        fire: Callable[[Envelope, QoS], Awaitable[None]],
        clock: ServerClock,
    ) -> None:
        self._nc = nc
        self._js = js
        self._settings = settings
        self._clock = clock
        self._publish = publish
        self._send = send
        self._fire = fire
        self.prefix = fallback_prefix(settings.service_name)
        self.stream = fallback_stream(settings.service_name)
        self._ready = False
        self._following: NatsSubscription | None = None
        self._followed_as: tuple[int, int] = (0, 0)  # (token, reconnects) the heap was built for
        self._due: list[tuple[float, int]] = []  # (due, stream sequence), a heap
        self._moved_at = 0.0  # monotonic, of the last move_due

    async def now(self) -> datetime:
        return await self._clock.now()

    def config(self) -> StreamConfig:
        return StreamConfig(
            name=self.stream,
            subjects=[f"{self.prefix}.*"],
            storage=StorageType.FILE,
            retention=RetentionPolicy.LIMITS,
            discard=DiscardPolicy.OLD,
            max_msgs_per_subject=1,
            num_replicas=self._settings.replicas,
            duplicate_window=self._settings.duplicate_window,
        )

    async def _ensure(self) -> None:
        if not self._ready:
            await ensure_stream(self._js, self.config())
            self._ready = True

    def _subject(self, target: str, message_id: str) -> str:
        """One subject per message of one target: ids of two types may meet."""
        return f"{self.prefix}.{schedule_token(f'{target} {message_id}')}"

    async def schedule(self, envelope: Envelope, qos: QoS, due: datetime) -> None:
        await self._ensure()
        target = envelope.subject
        subject = self._subject(target, envelope.message_id)

        async def send(envelope: Envelope, _: str, headers: dict[str, str], timeout: float) -> None:
            # The stream dedupes on the id within its window: the target's and the message's.
            headers = {**headers, MSG_ID: f"{target} {envelope.message_id}", TARGET: target}
            try:
                await self._send(envelope, subject, headers, timeout)
            except nats.errors.NoRespondersError:
                self._ready = False  # the stream is gone: create it again
                raise

        await self._publish(envelope, qos, send)

    async def cancel(self, subject: str, message_id: str) -> bool:
        """Won against a fire by compare-and-set on the message's subject: a tombstone written
        only if the schedule is still the subject's last message (a holder firing it has
        replaced it with its `qm-firing` copy first, the same way)."""
        await self._ensure()
        where = self._subject(subject, message_id)
        try:
            kept = await self._js.get_msg(self.stream, subject=where)
        except nats.js.errors.NotFoundError:
            return False
        headers = kept.headers or {}
        if FIRING in headers or CANCELLED in headers or kept.seq is None:
            return False
        if await self._replace(where, kept.seq, {CANCELLED: "1"}, b"") is None:
            return False  # a holder began to fire it
        await purge(self._nc, self.stream, where)
        return True

    async def _replace(
        self, subject: str, seq: int, headers: dict[str, str], body: bytes
    ) -> int | None:
        """Put a message on `subject` in place of message `seq`, if that is still its last:
        the new one's sequence, or None when something came first."""
        expect = {EXPECTED_LAST: str(seq), **headers}
        try:
            ack = await self._js.publish(subject, body, timeout=REQUEST_TIMEOUT, headers=expect)
        except nats.js.errors.APIError as exc:
            if exc.err_code == WRONG_LAST_SEQUENCE:
                return None
            raise
        return int(ack.seq)

    async def backlog(self) -> int:
        await self._ensure()
        return int((await self._js.stream_info(self.stream)).state.messages)

    async def move_due(self, token: int) -> None:
        self._moved_at = time.monotonic()
        await self._ensure()
        followed_as = (token, self._nc.stats["reconnects"])
        if self._following is None or followed_as != self._followed_as:
            # A new holder, or a new connection (an ordered consumer may not survive it):
            # read the whole stream again; whatever fired meanwhile is gone from it.
            await self._follow()
            self._followed_as = followed_as
        # The server's time, not this host's: the earliest it can be, so nothing moves early.
        now = (await self._clock.earliest()).timestamp()
        while self._due and self._due[0][0] <= now:
            due, seq = heapq.heappop(self._due)
            try:
                await self._fire_one(seq)
            except Exception:
                heapq.heappush(self._due, (due, seq))  # the next round tries again
                raise

    async def _fire_one(self, seq: int) -> None:
        try:
            kept = await self._js.get_msg(self.stream, seq)
        except nats.js.errors.NotFoundError:
            return  # cancelled, or fired already
        headers = dict(kept.headers or {})
        if CANCELLED in headers or kept.subject is None:
            return
        body = kept.data or b""
        if FIRING not in headers:
            # Claimed against a cancel first (see `cancel`); a copy marked firing is fired
            # by whichever holder finds it, also after this one died.
            marked = {name: value for name, value in headers.items() if name != MSG_ID}
            claimed = await self._replace(kept.subject, seq, {**marked, FIRING: "1"}, body)
            if claimed is None:
                return
            seq = claimed
        target = headers.pop(TARGET, "")
        headers.pop(FIRING, None)
        for name in [name for name in headers if name.startswith("Nats-")]:
            del headers[name]
        envelope = Envelope(headers=headers, body=body, subject=target)
        await self._fire(envelope, QoS(int(headers.get(H_QOS, "1"))))
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await self._js.delete_msg(self.stream, seq)

    async def _follow(self) -> None:
        if self._following is not None:
            try:
                await self._following.unsubscribe()
            except Exception as exc:  # a subscription of a connection gone
                log.debug("schedules: old subscription not closed: %s", exc)
        self._due.clear()
        self._following = await self._js.subscribe(
            f"{self.prefix}.*",
            stream=self.stream,
            ordered_consumer=True,
            headers_only=True,
            cb=self._seen,
        )

    async def _seen(self, msg: Msg) -> None:
        if time.monotonic() - self._moved_at > UNFOLLOW_AFTER:
            # No longer the holder: stop following (a new holder's first move follows again).
            following, self._following = self._following, None
            self._due.clear()
            if following is not None:
                with contextlib.suppress(Exception):
                    await following.unsubscribe()
            return
        due = due_of(dict(msg.headers or {}))
        if due is not None:
            heapq.heappush(self._due, (due.timestamp(), msg.metadata.sequence.stream))
