"""JetStream dead letters: a stream per service holding every message that could not be handled.

Two paths lead here, and both write with the same `Nats-Msg-Id`, so a message is kept once:
- the consumer copies a message itself when its last delivery fails or it cannot be decoded;
- the server's MAX_DELIVERIES and MSG_TERMINATED advisories, captured in a stream so none is
  missed while no instance runs, cover a consumer that died during the last delivery.

A copy carries no broker control header of the original (`Nats-Expected-Stream` would make the
dead-letter stream refuse it); the original `Nats-Msg-Id` is kept as `qm-orig-msg-id`. A copy
that would not fit the server's `max_payload` is stored as a stub: the record, the original
size and the first KiB of the body, its header values cut to fit. A stub is listed as one and
cannot be replayed.

The stream is bounded by `APP_DLQ_MAX_AGE`, `APP_DLQ_MAX_MESSAGES` and `APP_DLQ_MAX_BYTES`.
The server refuses a record over the count or size bound (discard-new); with
`APP_DLQ_DISCARD=old` the store then purges the oldest records, a hundredth of the bound at a
time, and writes again, so every record dropped is counted. Listing reads runs of the stream
in batches (app/brokers/direct_get.py), never one request per sequence.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DiscardPolicy, StorageType, StreamConfig
from nats.js.errors import APIError, NotFoundError

from app.brokers import nats_wire
from app.brokers.direct_get import batches, read_run
from app.errors import (
    ConfigurationError,
    DeadLetterNotFoundError,
    DeadLetterStoreFullError,
    MessageTooLargeError,
    NotReplayableError,
)
from app.messages import H_ID, H_QOS, H_TYPE, DeadLetterReason, Envelope, QoS
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
    D_STUB,
    D_SUBJECT,
    NO_RESULT,
    DeadLetter,
    DeadLetterDetail,
    DeadLetterPage,
    Failure,
    detail_from,
    naming,
)
from app.settings import Settings
from app.supervision import supervised
from app.transports.jetstream.streams import ensure_stream

INSUFFICIENT_RESOURCES = 10047
"""JetStream's error code for a stream asking more storage than the server has."""

log = logging.getLogger(__name__)

ADVISORY_STREAM = "QOSMESH_ADVISORIES"
ADVISORY_SUBJECTS = [
    "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.>",
    "$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.>",
]
D_STREAM = "qm-dlq-stream"
D_SEQ = "qm-dlq-seq"
D_SIZE = "qm-dlq-size"
ORIG_MSG_ID = "qm-orig-msg-id"
_DLQ_HEADERS = (
    D_REASON,
    D_ERROR,
    D_ERROR_TYPE,
    D_DELIVERIES,
    D_SUBJECT,
    D_STREAM,
    D_SEQ,
    D_CONSUMER,
    D_AT,
    D_STUB,
    D_SIZE,
    ORIG_MSG_ID,
)
STUB_BODY = 1024
STUB_VALUE = 256
"""A stub keeps at most this many characters of each header it copies (the id, the type)."""
ADVISORY_MAX_DELIVER = 5
STORE_FULL = 10077
TOO_LARGE = 10054
"""JetStream's answer to a record over the stream's `max_msg_size`."""
"""JetStream's answer to a write over a stream's count or size bound (discard-new)."""
ROOM = 100
"""A full store (policy old) drops a hundredth of its bound at once, not one record a write."""
LOAD_REFRESH = 10.0
"""Seconds between reads of the store's size for its gauges."""
FIRST_WINDOW = 64
"""Sequences a listing reads at first below its cursor; each further read doubles it, so holes
left by discards cost a few requests, not one per sequence."""

Publish = Callable[[Envelope, QoS], Awaitable[None]]


class JetStreamDeadLetters:
    """The dead-letter stream of one service; ids look like `js-<sequence>`."""

    prefix = "js"

    def __init__(
        self, nc: NatsClient, js: JetStreamContext, settings: Settings, publish: Publish
    ) -> None:
        self._nc = nc
        self._js = js
        self._settings = settings
        self._publish = publish
        service = settings.service_name
        self.stream = f"{service.upper().replace('-', '_')}_DLQ"
        self.subject = f"dlq.{service}"
        self._consumer_prefix = f"{service}__"
        self._task: asyncio.Task[None] | None = None
        self._load_task: asyncio.Task[None] | None = None
        self._load: tuple[Attributes, int, int, float] | None = None
        self._unwatch: Callable[[], None] = lambda: None
        self._room = asyncio.Lock()
        self._stopping = False

    async def start(self) -> None:
        try:
            await self._ensure()
        except APIError as exc:
            if exc.err_code != INSUFFICIENT_RESOURCES:
                raise
            raise ConfigurationError(
                f"the JetStream server cannot reserve APP_DLQ_MAX_BYTES="
                f"{self._settings.dlq_max_bytes} for the dead-letter stream {self.stream} "
                f"({exc.description}): lower APP_DLQ_MAX_BYTES, or give the server more "
                "storage (its max_file_store, or a larger disk)"
            ) from None
        dead_letters_dropped.add(
            0, {"messaging.system": "nats", "policy": self._settings.dlq_discard}
        )

    async def _ensure(self) -> None:
        settings = self._settings
        common = {"storage": StorageType.FILE, "num_replicas": settings.replicas}
        await ensure_stream(
            self._js,
            StreamConfig(
                name=self.stream,
                subjects=[self.subject],
                duplicate_window=settings.duplicate_window,
                max_age=settings.dlq_max_age or None,
                max_msgs=settings.dlq_max_messages or -1,
                max_bytes=settings.dlq_max_bytes or -1,
                # Full means refused, whatever the policy: a policy of old makes the room
                # itself, so that it can count what it drops.
                discard=DiscardPolicy.NEW,
                allow_direct=True,
                **common,  # type: ignore[arg-type]
            ),
        )
        self._unwatch = watch_dead_letters(lambda: self._load)
        self._load_task = supervised(self._read_load(), "dlq size")
        await ensure_stream(
            self._js,
            StreamConfig(
                name=ADVISORY_STREAM,
                subjects=ADVISORY_SUBJECTS,
                max_age=24 * 3600.0,
                **common,  # type: ignore[arg-type]
            ),
        )
        durable = f"{self._settings.service_name}__advisories"
        await self._js.add_consumer(
            ADVISORY_STREAM,
            ConsumerConfig(
                durable_name=durable,
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=30,
                max_deliver=ADVISORY_MAX_DELIVER,
                num_replicas=self._settings.replicas,
            ),
        )
        self._psub = await self._js.pull_subscribe_bind(durable=durable, stream=ADVISORY_STREAM)
        self._task = supervised(self._follow_advisories(), "dlq advisories")

    async def stop(self) -> None:
        self._stopping = True
        self._unwatch()
        for task in (self._task, self._load_task):
            if task is not None:
                task.cancel()
                await asyncio.wait({task}, timeout=2)

    async def _read_load(self) -> None:
        """Keep the store's size for its gauges, read on an interval, never per write."""
        settings = self._settings
        attributes: Attributes = {"messaging.system": "nats"}
        while not self._stopping:
            try:
                state = (await self._js.stream_info(self.stream)).state
                fill = max(
                    state.messages / settings.dlq_max_messages if settings.dlq_max_messages else 0,
                    state.bytes / settings.dlq_max_bytes if settings.dlq_max_bytes else 0,
                )
                self._load = (attributes, state.messages, state.bytes, round(fill, 4))
            except Exception as exc:
                log.debug("dead-letter store size not read: %s", exc)
            await asyncio.sleep(LOAD_REFRESH)

    async def add(
        self,
        envelope: Envelope,
        *,
        stream: str,
        seq: int,
        consumer: str,
        failure: Failure,
        deliveries: int,
        stub: bool = False,
    ) -> None:
        """Keep a copy of a message that will not be handled (once per stream sequence); a
        stub when asked or when the whole copy would not fit."""
        record = {
            **failure.record(),
            D_DELIVERIES: str(deliveries),
            D_SUBJECT: _one_line(envelope.subject),
            D_STREAM: stream,
            D_SEQ: str(seq),
            D_CONSUMER: consumer,
            D_AT: datetime.now(UTC).isoformat(),
            "Nats-Msg-Id": f"dlq-{stream}-{seq}",
        }
        headers = {**copied_headers(envelope.headers), **record}
        body = envelope.body
        size = nats_wire.frame_size(envelope.headers, body)
        if stub or not _fits(self._nc, headers, body):
            headers, body = _stub(self._nc, envelope, record, size)
        try:
            ack = await self._write(headers, body)
        except APIError as exc:
            if exc.err_code != TOO_LARGE or D_STUB in headers:
                raise
            # The stream's own message size bound is below the server's: keep a stub.
            headers, body = _stub(self._nc, envelope, record, size)
            ack = await self._write(headers, body)
        if not ack.duplicate:
            dead_letters.add(
                1,
                {
                    "messaging.system": "nats",
                    "destination": envelope.subject,
                    "reason": failure.reason,
                },
            )
            log.warning(
                "%s dead-lettered as js-%d%s: %s: %s",
                naming(_cut(envelope.message_id, STUB_VALUE), _cut(envelope.subject, STUB_VALUE)),
                ack.seq,
                f" (a stub: {size} bytes do not fit)" if D_STUB in headers else "",
                failure.reason,
                failure.error,
            )

    async def _write(self, headers: dict[str, str], body: bytes) -> Any:
        """Store a record; when the store is full, make room (policy old) or refuse."""
        try:
            return await self._publish_record(headers, body)
        except DeadLetterStoreFullError:
            if self._settings.dlq_discard == "new":
                dead_letters_dropped.add(1, {"messaging.system": "nats", "policy": "new"})
                raise
        # One writer at a time makes room, and the others find it made.
        async with self._room:
            for _ in range(5):
                try:
                    return await self._publish_record(headers, body)
                except DeadLetterStoreFullError:
                    await self._make_room(nats_wire.frame_size(headers, body))
        raise DeadLetterStoreFullError(f"dead-letter stream {self.stream} stays full")

    async def _publish_record(self, headers: dict[str, str], body: bytes) -> Any:
        try:
            return await self._js.publish(self.subject, body, timeout=5, headers=headers)
        except APIError as exc:
            if exc.err_code != STORE_FULL:
                raise
            raise DeadLetterStoreFullError(
                f"dead-letter stream {self.stream} is full ({exc.description}) and keeps what "
                f"it holds (APP_DLQ_DISCARD={self._settings.dlq_discard})"
            ) from exc

    async def _make_room(self, size: int) -> None:
        """Purge the oldest records: enough for `size` more bytes and one more record, and a
        hundredth of each bound besides."""
        settings = self._settings
        state = (await self._js.stream_info(self.stream)).state
        drop = 0
        if settings.dlq_max_messages:
            over = state.messages + 1 - settings.dlq_max_messages
            drop = max(drop, over + settings.dlq_max_messages // ROOM)
        if settings.dlq_max_bytes and state.messages:
            over_bytes = state.bytes + size - settings.dlq_max_bytes
            average = state.bytes / state.messages
            wanted = over_bytes + settings.dlq_max_bytes // ROOM
            drop = max(drop, math.ceil(wanted / average) if over_bytes > 0 else 0)
        keep = max(0, state.messages - max(drop, 1))
        answer = await self._nc.request(
            f"$JS.API.STREAM.PURGE.{self.stream}", json.dumps({"keep": keep}).encode(), timeout=5
        )
        purged = int(json.loads(answer.data).get("purged", 0))
        dead_letters_dropped.add(purged, {"messaging.system": "nats", "policy": "old"})
        log.warning(
            "dead-letter stream %s is full: its %d oldest records were dropped to make room",
            self.stream,
            purged,
        )

    async def _follow_advisories(self) -> None:
        """Runs until stopped: no failed fetch, ack or copy ends it. An advisory that cannot
        be processed is retried, and on its last delivery the message is kept as a stub."""
        while not self._stopping:
            try:
                msgs = await self._psub.fetch(batch=32, timeout=1.0)
            except nats.errors.TimeoutError:
                continue
            except Exception as exc:
                log.debug("advisory fetch failed: %s", exc)
                await asyncio.sleep(0.5)
                continue
            for msg in msgs:
                await self._process(msg)

    async def _process(self, msg: Msg) -> None:
        try:
            await self._on_advisory(json.loads(msg.data))
        except Exception as exc:
            if msg.metadata.num_delivered < ADVISORY_MAX_DELIVER:
                log.warning("advisory not processed; it will be redelivered: %s", exc)
                with contextlib.suppress(Exception):
                    await msg.nak(delay=1)
                return
            await self._give_up(msg.data, exc)
        with contextlib.suppress(Exception):
            await msg.ack()

    async def _give_up(self, data: bytes, cause: Exception) -> None:
        """The advisory's last delivery failed: keep what it names as a stub, then log."""
        try:
            advisory = json.loads(data)
            stream, seq = str(advisory["stream"]), int(str(advisory["stream_seq"]))
            original = Envelope(headers={}, body=b"", subject="")
            with contextlib.suppress(Exception):
                raw = await self._js.get_msg(stream, seq)
                headers = {str(k): str(v) for k, v in (raw.headers or {}).items()}
                original = Envelope(
                    headers=headers, body=raw.data or b"", subject=raw.subject or ""
                )
            await self.add(
                original,
                stream=stream,
                seq=seq,
                consumer=str(advisory.get("consumer", "")),
                failure=Failure(
                    DeadLetterReason.MAX_DELIVERIES,
                    f"copy failed {ADVISORY_MAX_DELIVER} times: {cause}",
                    NO_RESULT.error_type,
                ),
                deliveries=int(str(advisory.get("deliveries", 0))),
                stub=True,
            )
        except Exception:
            log.exception("advisory %r given up, and no stub could be stored", data[:300])
            return
        log.error("advisory for %s/%d given up; a stub was stored: %s", stream, seq, cause)

    async def _on_advisory(self, advisory: dict[str, object]) -> None:
        consumer = str(advisory.get("consumer", ""))
        if not consumer.startswith(self._consumer_prefix):
            return
        stream, seq = str(advisory["stream"]), int(str(advisory["stream_seq"]))
        try:
            raw = await self._js.get_msg(stream, seq)
        except NotFoundError:
            log.error("message %s/%d reached its delivery limit but is gone", stream, seq)
            return
        kind = str(advisory.get("type", ""))
        terminated = "terminated" in kind
        headers = {str(k): str(v) for k, v in (raw.headers or {}).items()}
        envelope = Envelope(headers=headers, body=raw.data or b"", subject=raw.subject or "")
        await self.add(
            envelope,
            stream=stream,
            seq=seq,
            consumer=consumer,
            failure=Failure(DeadLetterReason.TERMINATED, "terminated by a consumer", "Terminated")
            if terminated
            else NO_RESULT,
            deliveries=int(str(advisory.get("deliveries", 0))),
        )

    # -- the DeadLetterStore contract ------------------------------------------------------

    def _seq(self, dlq_id: str) -> int:
        kind, _, number = dlq_id.partition("-")
        if kind != self.prefix or not number.isdigit():
            raise DeadLetterNotFoundError(dlq_id)
        return int(number)

    async def _raw(self, seq: int) -> tuple[dict[str, str], bytes, datetime | None]:
        try:
            raw = await self._js.get_msg(self.stream, seq)
        except NotFoundError:
            raise DeadLetterNotFoundError(f"{self.prefix}-{seq}") from None
        headers = {str(k): str(v) for k, v in (raw.headers or {}).items()}
        return headers, raw.data or b"", raw.time

    async def _fetch(self, seq: int) -> DeadLetterDetail:
        headers, body, stored_at = await self._raw(seq)
        return detail_from(f"{self.prefix}-{seq}", "jetstream", headers, body, stored_at)

    async def list(self, limit: int, cursor: str | None) -> DeadLetterPage:
        """Newest first: runs below the cursor read in batches, each twice the last, until
        the page is full or the stream's start is reached."""
        state = (await self._js.stream_info(self.stream)).state
        first = max(state.first_seq, 1)
        top = self._seq(cursor) if cursor else state.last_seq
        if not batches(self._nc):
            return await self._list_one_by_one(limit, first, top, state.messages)
        found: list[DeadLetter] = []
        window = max(FIRST_WINDOW, limit)
        while top >= first and len(found) <= limit and limit > 0:
            start = max(first, top - window + 1)
            run, _requests = await read_run(self._nc, self.stream, start, top)
            for stored in reversed(run):
                detail = detail_from(
                    f"{self.prefix}-{stored.seq}", "jetstream", stored.headers, b"", stored.time
                )
                found.append(DeadLetter.model_validate(detail.model_dump()))
            top = start - 1
            window *= 2
        if len(found) > limit:
            next_cursor: str | None = found[limit].dlq_id
        else:
            next_cursor = f"{self.prefix}-{top}" if top >= first and limit > 0 else None
        return DeadLetterPage(items=found[:limit], total=state.messages, next_cursor=next_cursor)

    async def _list_one_by_one(
        self, limit: int, first: int, top: int, total: int
    ) -> DeadLetterPage:
        """A server older than 2.11 answers one message per request: one per sequence."""
        seq = top
        items: list[DeadLetter] = []
        while seq >= first and len(items) < limit:
            with contextlib.suppress(DeadLetterNotFoundError):
                detail = await self._fetch(seq)
                items.append(DeadLetter.model_validate(detail.model_dump()))
            seq -= 1
        more = seq >= first
        return DeadLetterPage(
            items=items, total=total, next_cursor=f"{self.prefix}-{seq}" if more else None
        )

    async def get(self, dlq_id: str) -> DeadLetterDetail:
        return await self._fetch(self._seq(dlq_id))

    async def delete(self, dlq_id: str) -> None:
        seq = self._seq(dlq_id)
        await self._raw(seq)  # the server answers a missing sequence with a generic error
        try:
            await self._js.delete_msg(self.stream, seq)
        except NotFoundError:
            raise DeadLetterNotFoundError(dlq_id) from None

    async def replay(self, dlq_id: str) -> str:
        """Publish the original message again (same message id), then drop the dead letter."""
        stored, body, _ = await self._raw(self._seq(dlq_id))
        if stored.get(D_STUB) == "true":
            raise NotReplayableError(
                f"{dlq_id} is a stub: its message ({stored.get(D_SIZE, '?')} bytes with headers) "
                "was too large to keep whole, so there is nothing to replay"
            )
        headers = {k: v for k, v in stored.items() if k not in _DLQ_HEADERS and k != "Nats-Msg-Id"}
        message_id = headers.get(H_ID, "")
        # A fresh broker dedupe id: the original one may still be inside the duplicate window.
        headers["Nats-Msg-Id"] = f"{message_id}-replay-{dlq_id}"
        qos = QoS(int(headers.get(H_QOS, "1")))
        await self._publish(Envelope(headers=headers, body=body, subject=stored[D_SUBJECT]), qos)
        await self.delete(dlq_id)
        return message_id


_STUB_KEEPS = (H_ID, H_TYPE, H_QOS, ORIG_MSG_ID)


def _stub(
    nc: NatsClient, envelope: Envelope, record: dict[str, str], size: int
) -> tuple[dict[str, str], bytes]:
    """A record that fits: the reason and the record whole, the message's id, type and QoS
    cut to STUB_VALUE characters each, and as much of the first KiB of the body as fits."""
    copied = copied_headers(envelope.headers)
    kept = {k: _cut(copied[k], STUB_VALUE) for k in _STUB_KEEPS if k in copied}
    headers = {**kept, **record, D_STUB: "true", D_SIZE: str(size)}
    if not _fits(nc, headers, b""):  # a subject or consumer name of pathological length
        headers = {
            k: _cut(v, STUB_VALUE) if k not in (D_REASON, "Nats-Msg-Id") else v
            for k, v in headers.items()
        }
    room = nc.max_payload - nats_wire.frame_size(headers, b"")
    return headers, envelope.body[: max(0, min(STUB_BODY, room))]


def _cut(value: str, most: int) -> str:
    return value if len(value) <= most else value[: most - 3] + "..."


def copied_headers(headers: Mapping[str, object]) -> dict[str, str]:
    """The headers a dead-letter copy keeps: none of the broker's control headers (`Nats-*`)
    nor a dead-letter record of the sender's (`qm-dlq-*`),
    the original `Nats-Msg-Id` as `qm-orig-msg-id`, and only names and values NATS can carry."""
    kept: dict[str, str] = {}
    for name, value in headers.items():  # nats-py hands odd values over as email Headers
        if name.lower() == "nats-msg-id":
            kept[ORIG_MSG_ID] = _one_line(str(value))
        elif not name.lower().startswith(("nats-", "qm-dlq-")) and nats_wire.is_token(name):
            kept[name] = _one_line(str(value))
    return kept


def _fits(nc: NatsClient, headers: dict[str, str], body: bytes) -> bool:
    try:
        nats_wire.check_size(nc, headers, body, nats_wire.JETSTREAM_MAX_HEADERS)
    except MessageTooLargeError:
        return False
    return True


def _one_line(text: str) -> str:
    return text.replace("\r", " ").replace("\n", " ")
