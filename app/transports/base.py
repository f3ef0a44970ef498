"""The contract every broker module implements, and the values that cross it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple, Protocol, runtime_checkable

from app.messages import Envelope, QoS
from app.qos.dead_letters import DeadLetterStore

Handler = Callable[[Envelope, "Delivery"], Awaitable[bool]]
"""Handles one delivery: True when it took effect, False when it was a known duplicate."""


class Delivery(NamedTuple):
    """What the broker says about one delivery of a message (a tuple: made once per delivery,
    and a frozen dataclass costs several times as much to build)."""

    transport: str
    subject: str
    attempt: int
    max_attempts: int
    message_id: str


@dataclass(slots=True, frozen=True)
class Subscription:
    """Messages on `subject` go to `handler`.

    With `group` set, the instances sharing it compete (each message reaches one of them); with
    `group=None` every instance gets every message (broadcast).
    """

    subject: str
    group: str | None
    handler: Handler
    qos: QoS
    name: str


class Transport(Protocol):
    """A broker seen from the router.

    `publish` returns once the message is as safe as its QoS allows: for QoS 0 handed to the
    client (loss is counted, never raised); for QoS 1 and 2 acknowledged by the broker's
    persistent store, retried with backoff within the budget, else `PublishError` is raised.

    For consumers, the handler's outcome decides the message's fate: it returns -> ack; it raises
    `DecodeError` -> the message can never succeed and is dead-lettered at once; it raises
    anything else -> redelivered after a growing delay, and dead-lettered after the last try.
    QoS 0 transports cannot redeliver: a failed handler is counted and logged.
    """

    name: str

    @property
    def dead_letters(self) -> DeadLetterStore | None:
        """Where this transport keeps messages it could not deliver (None for QoS 0 ones)."""
        ...

    @property
    def schedules(self) -> Schedules | None:
        """Where this transport keeps delayed messages until they are due (None: it cannot)."""
        ...

    async def start(self) -> None:
        """Create what the broker needs (streams, groups) and start consuming."""

    async def publish(self, envelope: Envelope, qos: QoS) -> None: ...

    async def subscribe(self, subscription: Subscription) -> None: ...

    async def stop(self, timeout: float) -> None:
        """Stop taking new messages, let in-flight handlers finish within `timeout`."""


@runtime_checkable
class BatchPublisher(Protocol):
    """A transport with a cheaper way to make many first publish attempts than one `publish`
    each (the router sends what they did not confirm through `publish`, with its retries)."""

    async def first_attempts(
        self, envelopes: Sequence[Envelope], qos: QoS, window: int
    ) -> list[Envelope]:
        """Send every envelope once, at most `window` awaiting confirmation at once, counting
        the confirmed ones as sent; return those not confirmed."""

    async def publish_rest(self, envelope: Envelope, qos: QoS) -> None:
        """`publish`, for an envelope whose first attempt `first_attempts` made: the attempts
        of both together are APP_PUBLISH_ATTEMPTS."""


class Schedules(Protocol):
    """Delayed messages on one transport: kept by the broker until they are due, then published
    to their subject as the QoS demands, with their message id (QoS 2 stays once).

    `schedule` returns once the broker has persisted the message (retried within the budget,
    else `PublishError`); scheduling the same message id again changes nothing. The message
    fires no earlier than `due`. `cancel` removes one that has not fired. When the transport
    needs an instance to move due messages, `move_due` is it: the runtime calls it every
    `MOVE_EVERY` seconds on the one instance holding the lease `scheduler-<transport>`."""

    native: bool
    """The broker fires the messages itself (no `move_due` needed)."""

    max_delay: float | None
    """The longest delay in seconds it keeps (None: any); `schedule` refuses a longer one with
    InvalidMessageError, and the outbox refuses it at write."""

    async def now(self) -> datetime:
        """The broker's time (app/brokers/clock.py): a delay is counted from it, and a message
        is due by it, whatever this host's clock says."""
        ...

    async def schedule(self, envelope: Envelope, qos: QoS, due: datetime) -> None: ...

    async def cancel(self, subject: str, message_id: str) -> bool:
        """Remove the message if it has not fired; whether it was there to remove."""

    async def backlog(self) -> int:
        """How many messages wait for their time."""

    async def move_due(self, token: int) -> None:
        """Publish the messages that are due (the lease holder only, with its fencing token)."""


MOVE_EVERY = 0.25
"""How often the lease holder looks for due messages, where the broker does not fire them."""
