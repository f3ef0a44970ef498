"""Message contracts and their wire envelope. Imports nothing else of the app.

A message type declares its quality of service:

    class OrderPlaced(Message): ...                      # QoS 1, at least once (the default)
    class CacheWarmed(Event): ...                        # QoS 0, at most once
    class OrderShipped(ReliableEvent): ...               # an event with QoS 1
    class PaymentCaptured(Message):                      # QoS 2, effectively once
        qos = QoS.EXACTLY_ONCE

Subject rule: `<service>.<type name in snake_case>` (`OrderPlaced` of service `shop` is
`shop.order_placed`), where service is the publishing service's APP_SERVICE_NAME. A type that
another service consumes, or that needs a fixed name, sets `subject = "billing.invoice_due"`.
"""

from __future__ import annotations

import random
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import IntEnum, StrEnum
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

ENVELOPE_VERSION = "1"

H_VERSION = "qm-version"
H_ID = "qm-id"
H_TYPE = "qm-type"
H_SCHEMA = "qm-schema"
H_QOS = "qm-qos"
H_CORRELATION = "qm-correlation-id"
H_DELIVER_AT = "qm-deliver-at"
"""On a delayed message: when it is due (`due_text`). The fired copy keeps it."""

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_PAIRS = [high + low for high in _CROCKFORD for low in _CROCKFORD]  # 10 bits -> 2 characters
_SHIFTS = tuple(range(120, -1, -10))  # 13 pairs: 130 bits, the top 2 always zero
_QOS_TEXT = {0: "0", 1: "1", 2: "2"}
_SNAKE = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


class QoS(IntEnum):
    AT_MOST_ONCE = 0
    AT_LEAST_ONCE = 1
    EXACTLY_ONCE = 2


def new_message_id() -> str:
    """A ULID: 26 Crockford base32 characters, sortable by creation time, valid as a KV key.

    The 80 random bits identify, they do not protect: Python's generator (reseeded in a forked
    child) gives them without a system call per message."""
    value = (time.time_ns() // 1_000_000) << 80 | random.getrandbits(80)
    return "".join([_PAIRS[(value >> shift) & 1023] for shift in _SHIFTS])


def due_text(due: datetime) -> str:
    """`due` as RFC 3339 in UTC, rounded up to the millisecond (never earlier than `due`)."""
    due = due.astimezone(UTC)
    if due.microsecond % 1000:
        due += timedelta(microseconds=1000 - due.microsecond % 1000)
    return due.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def due_of(headers: dict[str, str]) -> datetime | None:
    """When a delayed message is due, from its headers; None for one sent at once."""
    text = headers.get(H_DELIVER_AT)
    return None if text is None else datetime.fromisoformat(text)


def snake_case(name: str) -> str:
    return _SNAKE.sub("_", name).lower()


def _utcnow() -> datetime:
    return datetime.now(UTC)


MAX_ID = 256
"""The longest message id a message may carry."""


class Message(BaseModel):
    """A command or fact sent to other instances; QoS 1 (at least once) unless the type says."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    qos: ClassVar[QoS] = QoS.AT_LEAST_ONCE
    subject: ClassVar[str | None] = None
    schema_version: ClassVar[int] = 1

    # Checked when the message is made: an empty id would make every QoS 2 copy one message,
    # and the id travels in a header (no whitespace) and keys the idempotency stores.
    message_id: str = Field(
        default_factory=new_message_id, min_length=1, max_length=MAX_ID, pattern=r"^\S+$"
    )
    correlation_id: str = ""
    timestamp: datetime = Field(default_factory=_utcnow)

    @model_validator(mode="after")
    def _default_correlation(self) -> Message:
        if not self.correlation_id:
            object.__setattr__(self, "correlation_id", self.message_id)
        return self

    @classmethod
    def type_name(cls) -> str:
        return cls.__name__

    @classmethod
    def subject_for(cls, service: str) -> str:
        return cls.subject or f"{service}.{snake_case(cls.__name__)}"


class Event(Message):
    """A notification whose loss is acceptable (CQRS read-side updates): QoS 0."""

    qos: ClassVar[QoS] = QoS.AT_MOST_ONCE


class ReliableEvent(Event):
    """An event that must arrive: QoS 1."""

    qos: ClassVar[QoS] = QoS.AT_LEAST_ONCE


@dataclass(slots=True)
class Envelope:
    """What travels: string headers and a JSON body."""

    headers: dict[str, str]
    body: bytes
    subject: str = ""
    dedupe_id: str = ""
    """The id the Redis publisher dedupes a QoS 2 message on, when it is not the message id (a
    dead letter replayed inside the dedupe window); JetStream's is the `Nats-Msg-Id` header."""

    @property
    def message_id(self) -> str:
        return self.headers.get(H_ID, "")

    @property
    def type_name(self) -> str:
        return self.headers.get(H_TYPE, "")


def encode(message: Message, qos: QoS, subject: str) -> Envelope:
    """The envelope of `message`. Headers that would only say the default are left out (every
    header costs on both ends): `qm-qos` when 1, `qm-schema` when 1, `qm-correlation-id` when it
    is the message id."""
    headers = {H_VERSION: ENVELOPE_VERSION, H_ID: message.message_id, H_TYPE: message.type_name()}
    if qos != QoS.AT_LEAST_ONCE:
        headers[H_QOS] = _QOS_TEXT[qos]
    if message.schema_version != 1:
        headers[H_SCHEMA] = str(message.schema_version)
    if message.correlation_id != message.message_id:
        headers[H_CORRELATION] = message.correlation_id
    body = message.__pydantic_serializer__.to_json(message)
    return Envelope(headers=headers, body=body, subject=subject)


class DeadLetterReason(StrEnum):
    """Why a message is in a dead-letter store: the `reason` of a dead letter and of the
    `qosmesh.dead_letters` counter."""

    MAX_DELIVERIES = "max_deliveries"  # its handler failed on every delivery
    TERMINATED = "terminated"  # the broker gave up on it (JetStream: acked with TERM)
    UNDECODABLE = "undecodable"  # not an envelope, or a body that does not validate
    UNKNOWN_VERSION = "unknown_version"  # an envelope or schema version nobody here speaks
    UNKNOWN_TYPE = "unknown_type"  # a type the consumer has no handler for
    OVERSIZED = "oversized"  # larger than APP_MAX_MESSAGE_BYTES


class DecodeError(ValueError):
    """Bytes that can never become a message, and the reason it is dead-lettered for."""

    reason = DeadLetterReason.UNDECODABLE

    def __init__(self, detail: str, reason: DeadLetterReason | None = None) -> None:
        super().__init__(detail)
        if reason:
            self.reason = reason


class UnknownVersionError(DecodeError):
    """An envelope or message schema version this code does not speak."""

    reason = DeadLetterReason.UNKNOWN_VERSION


class NewerSchemaError(UnknownVersionError):
    """A schema newer than this instance knows: during a rolling deploy an instance of the new
    version will read it, so it is handed back for later, not dead-lettered at once."""


NO_VERSION = f"no {H_VERSION} header: not a qosmesh envelope"
NO_TYPE = f"no {H_TYPE} header: not a qosmesh envelope"


def decode_message(envelope: Envelope, types: dict[str, type[Message]]) -> Message:
    """The message in `envelope`, or a DecodeError saying why it can never be read."""
    version = envelope.headers.get(H_VERSION)
    if version is None:
        raise UnknownVersionError(NO_VERSION)
    if version != ENVELOPE_VERSION:
        raise UnknownVersionError(
            f"envelope version {version!r}: this service reads version {ENVELOPE_VERSION}"
        )
    if not envelope.type_name:
        raise DecodeError(NO_TYPE, DeadLetterReason.UNKNOWN_TYPE)
    message_type = types.get(envelope.type_name)
    if message_type is None:
        raise DecodeError(
            f"no handler for type {envelope.type_name!r}", DeadLetterReason.UNKNOWN_TYPE
        )
    name, schema = message_type.type_name(), envelope.headers.get(H_SCHEMA, "1")
    if not schema.isdigit():
        raise UnknownVersionError(f"{name} schema {schema!r} is not a version number")
    if int(schema) > message_type.schema_version:
        raise NewerSchemaError(
            f"{name} schema {schema}: this service reads up to {message_type.schema_version}"
        )
    try:
        return message_type.model_validate_json(envelope.body)
    except ValidationError as exc:
        problems = "; ".join(_describe(error) for error in exc.errors()[:3])
        raise DecodeError(f"invalid {message_type.type_name()} body: {problems}") from exc


def _describe(error: Any) -> str:
    where = ".".join(str(part) for part in error.get("loc", ()))
    return f"{where}: {error['msg']}" if where else str(error["msg"])
