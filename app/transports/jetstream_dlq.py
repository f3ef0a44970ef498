"""JetStream dead letters: a stream per service holding every message that could not be handled.

Two paths lead here, and both write with the same `Nats-Msg-Id`, so a message is kept once:
- the consumer copies a message itself when its last delivery fails or it cannot be decoded;
- the server's MAX_DELIVERIES and MSG_TERMINATED advisories, captured in a stream so none is
  missed while no instance runs, cover a consumer that died during the last delivery.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import nats.errors
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from app.errors import DeadLetterNotFoundError
from app.messages import H_ID, H_QOS, H_TYPE, Envelope, QoS
from app.settings import Settings
from app.telemetry import dead_letters
from app.transports.base import DeadLetter, DeadLetterDetail, DeadLetterPage, parse_time
from app.transports.jetstream_streams import ensure_stream

log = logging.getLogger(__name__)

ADVISORY_STREAM = "QOSMESH_ADVISORIES"
ADVISORY_SUBJECTS = [
    "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.>",
    "$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.>",
]
D_REASON = "qm-dlq-reason"
D_ERROR = "qm-dlq-error"
D_DELIVERIES = "qm-dlq-deliveries"
D_SUBJECT = "qm-dlq-subject"
D_STREAM = "qm-dlq-stream"
D_SEQ = "qm-dlq-seq"
D_CONSUMER = "qm-dlq-consumer"
D_AT = "qm-dlq-at"
_DLQ_HEADERS = (D_REASON, D_ERROR, D_DELIVERIES, D_SUBJECT, D_STREAM, D_SEQ, D_CONSUMER, D_AT)

Publish = Callable[[Envelope, QoS], Awaitable[None]]


class JetStreamDeadLetters:
    """The dead-letter stream of one service; ids look like `js-<sequence>`."""

    prefix = "js"

    def __init__(self, js: JetStreamContext, settings: Settings, publish: Publish) -> None:
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
                num_replicas=self._settings.replicas,
            ),
        )
        self._psub = await self._js.pull_subscribe_bind(durable=durable, stream=ADVISORY_STREAM)
        self._task = asyncio.create_task(self._follow_advisories(), name="dlq advisories")

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
        reason: str,
        error: str,
        deliveries: int,
    ) -> None:
        """Keep a copy of a message that will not be handled (once per stream sequence)."""
        headers = {
            **{k: v for k, v in envelope.headers.items() if k != "Nats-Msg-Id"},
            D_REASON: reason,
            D_ERROR: error[:1000],
            D_DELIVERIES: str(deliveries),
            D_SUBJECT: envelope.subject,
            D_STREAM: stream,
            D_SEQ: str(seq),
            D_CONSUMER: consumer,
            D_AT: datetime.now(UTC).isoformat(),
            "Nats-Msg-Id": f"dlq-{stream}-{seq}",
        }
        ack = await self._js.publish(self.subject, envelope.body, timeout=5, headers=headers)
        if not ack.duplicate:
            dead_letters.add(
                1,
                {"messaging.system": "nats", "destination": envelope.subject, "reason": reason},
            )
            log.warning(
                "message %s dead-lettered as js-%d: %s: %s",
                envelope.message_id,
                ack.seq,
                reason,
                error,
            )

    async def _follow_advisories(self) -> None:
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
                try:
                    await self._on_advisory(json.loads(msg.data))
                except Exception:
                    log.exception("advisory not processed; it will be redelivered")
                    with contextlib.suppress(Exception):
                        await msg.nak(delay=1)
                    continue
                await msg.ack()

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
        envelope = Envelope(
            headers=dict(raw.headers or {}), body=raw.data or b"", subject=raw.subject or ""
        )
        await self.add(
            envelope,
            stream=stream,
            seq=seq,
            consumer=consumer,
            reason="terminated" if terminated else "max_deliveries",
            error="terminated by a consumer"
            if terminated
            else "delivery limit reached with no handler result (consumer died or timed out)",
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
        return DeadLetterDetail(
            dlq_id=f"{self.prefix}-{seq}",
            message_id=headers.get(H_ID, ""),
            type=headers.get(H_TYPE, ""),
            subject=headers.get(D_SUBJECT, ""),
            transport="jetstream",
            reason=headers.get(D_REASON, ""),
            error=headers.get(D_ERROR, ""),
            deliveries=int(headers.get(D_DELIVERIES, "0") or 0),
            dead_at=parse_time(headers.get(D_AT)) or stored_at or datetime.now(UTC),
            headers=headers,
            body=body.decode("utf-8", errors="replace"),
        )

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
        headers = {k: v for k, v in stored.items() if k not in _DLQ_HEADERS}
        message_id = headers.get(H_ID, "")
        # A fresh broker dedupe id: the original one may still be inside the duplicate window.
        headers["Nats-Msg-Id"] = f"{message_id}-replay-{dlq_id}"
        qos = QoS(int(headers.get(H_QOS, "1")))
        await self._publish(Envelope(headers=headers, body=body, subject=stored[D_SUBJECT]), qos)
        await self.delete(dlq_id)
        return message_id
