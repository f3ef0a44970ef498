"""The exceptions qosmesh raises, in one hierarchy callers can catch by what they can act on.

QosMeshError
├── ConfigurationError      settings that cannot work (bad value, conflicting broker config)
├── BrokerUnavailableError  a broker could not be reached or refused us at start
│   └── StoreUnavailableError   a store a delivery needs did not answer: it waits, unspent
├── DatabaseUnavailableError    PostgreSQL could not be reached, or refused us, at start
├── PublishError            the broker did not confirm a publish within the retry budget
│   └── MessageTooLargeError    headers and body exceed the broker's limit: refused, never sent
├── HandlerTimeoutError     a handler ran past its deadline: cancelled, its delivery failed
├── DeadLetterNotFoundError no dead letter with that id
├── DeadRowNotFoundError    no dead outbox row with that id
├── NotReplayableError      a dead letter kept as a stub (too large to copy whole)
├── DeadLetterStoreFullError    the dead-letter store is at its bound and refuses new records
├── InvalidMessageError     a message refused as it is, for good (a delay too long, a stream limit)
├── DiscoveryError          membership could not be read or written
│   └── NoInstanceError     no live instance of the service a peer call names
├── LeaseLostError          this instance no longer holds a lease it held (expired, or taken)
└── StaleTokenError         a write carried a fencing token older than one already seen

ValueError
└── DecodeError             bytes on the wire that are not a message we can read
    └── UnknownVersionError an envelope or schema version we do not speak
        └── NewerSchemaError    a schema newer than ours: retried, for a rolling deploy
(these two live with the contracts in app.messages, which import nothing of the app)
"""

from __future__ import annotations


class QosMeshError(Exception):
    """Base class of every error qosmesh raises on purpose."""


class ConfigurationError(QosMeshError):
    """Settings that cannot work together or cannot be applied."""


class BrokerUnavailableError(QosMeshError):
    """A broker could not be reached, or refused the connection, at start."""


class DatabaseUnavailableError(QosMeshError):
    """PostgreSQL could not be reached, refused the credentials, or has no such database."""


class StoreUnavailableError(BrokerUnavailableError):
    """The store a delivery needs (the QoS 2 idempotency store) did not answer: a broker
    restarting or electing a leader. The delivery waits for it in place, without spending one
    of its deliveries, as for any broker that is away."""


class PublishError(QosMeshError):
    """The broker did not confirm a publish within the retry budget; the message may not exist."""


class MessageTooLargeError(PublishError):
    """Headers and body together exceed what the broker accepts; the message was not sent.

    NATS counts the header block against `max_payload`, and answers a frame over it by closing
    the connection: such a message is refused before it reaches the wire."""


class HandlerTimeoutError(QosMeshError):
    """A handler ran past its deadline (APP_HANDLER_TIMEOUT, or its own `timeout=`) and was
    cancelled. Its delivery failed as for any handler error: tried again later, dead-lettered
    on the last delivery. Not a TimeoutError: that one says a broker did not answer, which a
    delivery waits out in place."""


class DeadRowNotFoundError(QosMeshError):
    """No outbox row with that id is set aside as dead (never was, or retried or discarded)."""


class NotReplayableError(QosMeshError):
    """The dead letter is a stub (its message was too large to copy whole): nothing to replay."""


class DeadLetterStoreFullError(QosMeshError):
    """The dead-letter store is at its bound and keeps what it holds (`APP_DLQ_DISCARD=new`):
    the message stays unsettled where it is, and is tried again later."""


class InvalidMessageError(QosMeshError, ValueError):
    """A message that cannot be published as it is, e.g. a QoS 2 message with no message id."""


class DeadLetterNotFoundError(QosMeshError):
    """No dead letter is stored under the given id."""


class DiscoveryError(QosMeshError):
    """Membership could not be read from or written to the discovery bucket."""


class NoInstanceError(DiscoveryError):
    """A peer call names a service with no live, non-draining instance in the discovery view."""

    def __init__(self, service: str) -> None:
        super().__init__(f"no live instance of service {service!r} in the discovery view")
        self.service = service


class LeaseLostError(QosMeshError):
    """The lease expired (this instance paused or lost the broker past its TTL) or another
    instance holds it now: stop the work it guarded."""


class StaleTokenError(QosMeshError):
    """A write with a fencing token older than the newest the resource has seen: it came from a
    holder that lost its lease, and is refused."""


from app.messages import DecodeError, UnknownVersionError  # noqa: E402

__all__ = [
    "BrokerUnavailableError",
    "ConfigurationError",
    "DeadLetterNotFoundError",
    "DecodeError",
    "DiscoveryError",
    "HandlerTimeoutError",
    "InvalidMessageError",
    "LeaseLostError",
    "MessageTooLargeError",
    "NoInstanceError",
    "NotReplayableError",
    "PublishError",
    "QosMeshError",
    "StaleTokenError",
    "UnknownVersionError",
]
