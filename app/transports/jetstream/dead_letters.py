"""JetStream dead letters: a stream per service holding every message that could not be handled.

Two paths lead here, and both write with the same `Nats-Msg-Id`, so a message is kept once:
- the consumer copies a message itself when its last delivery fails or it cannot be decoded;
- the server's MAX_DELIVERIES and MSG_TERMINATED advisories, captured in a stream so none is
  missed while no instance runs, cover a consumer that died during the last delivery.

A copy carries no broker control header of the original (`Nats-Expected-Stream` would make the
dead-letter stream refuse it); the original `Nats-Msg-Id` is kept as `qm-orig-msg-id`. A copy
that would not fit the server's `max_payload` is stored as a stub: the record, the original
size and the first KiB of the body. A stub is listed as one and cannot be replayed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from app.brokers import nats_wire
from app.errors import DeadLetterNotFoundError, MessageTooLargeError, NotReplayableError
from app.messages import H_ID, H_QOS, H_TYPE, DeadLetterReason, Envelope, QoS
from app.observability.instruments import dead_letters
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
)
from app.settings import Settings
from app.supervision import supervised
from app.transports.jetstream.streams import ensure_stream

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
ADVISORY_MAX_DELIVER = 5

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
        self._stopping = False

    async def start(self) -> None:
        common = {"storage": StorageType.FILE, "num_replicas": self._settings.replicas}
        await ensure_stream(
            self._js,
            StreamConfig(
                name=self.stream,
                subjects=[self.subject],
                duplicate_window=self._settings.duplicate_window,
                **common,  # type: ignore[arg-type]
            ),
        )
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
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=2)

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
            kept = {k: v for k, v in copied_headers(envelope.headers).items() if k in _STUB_KEEPS}
            headers = {**kept, **record, D_STUB: "true", D_SIZE: str(size)}
            body = body[:STUB_BODY]
        ack = await self._js.publish(self.subject, body, timeout=5, headers=headers)
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
                "message %s dead-lettered as js-%d%s: %s: %s",
                envelope.message_id,
                ack.seq,
                f" (a stub: {size} bytes do not fit)" if D_STUB in headers else "",
                failure.reason,
                failure.error,
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
        info = await self._js.stream_info(self.stream)
        state = info.state
        seq = self._seq(cursor) if cursor else state.last_seq
        items: list[DeadLetter] = []
        while seq >= max(state.first_seq, 1) and len(items) < limit:
            with contextlib.suppress(DeadLetterNotFoundError):
                detail = await self._fetch(seq)
                items.append(DeadLetter.model_validate(detail.model_dump()))
            seq -= 1
        more = seq >= max(state.first_seq, 1)
        return DeadLetterPage(
            items=items, total=state.messages, next_cursor=f"{self.prefix}-{seq}" if more else None
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


_STUB_KEEPS = frozenset({H_ID, H_TYPE, H_QOS, ORIG_MSG_ID})


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
