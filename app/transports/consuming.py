"""What every acking consumer shares: the one decision of how a delivery is settled, its
running handlers, bounded, and its metric series.

A transport only talks to its broker: for one delivery it can ack, nak (hand it back for a
later try), or dead-letter it (copy it to the dead-letter store and settle it there). What a
handler's end means is decided here, once, for every transport:

- returned: ACK (applied) or DUPLICATE (a QoS 2 repeat; acked too);
- a message that cannot be read (DecodeError): DEAD at once; one of a newer schema than this
  instance knows (a rolling deploy): RETRY with a longer delay, DEAD on its last delivery;
- BUSY (the QoS 2 claim is held by another delivery right now) and an infrastructure error
  (a broker or store unavailable): waited out in place, the delivery kept in progress, until
  the claim frees or goes stale or the infrastructure answers; neither uses up a delivery;
- any other error: RETRY after a growing delay, or DEAD once the delivery was the last one.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, NamedTuple, Protocol

from app.errors import (
    BrokerUnavailableError,
    DiscoveryError,
    MessageTooLargeError,
    PublishError,
)
from app.messages import DeadLetterReason, DecodeError, Envelope, NewerSchemaError, QoS
from app.observability.instruments import consumed_series, process_duration, redeliveries
from app.qos.claims import ClaimBusy
from app.qos.dead_letters import NO_RESULT, Failure
from app.qos.retries import backoff
from app.transports.base import Delivery

log = logging.getLogger(__name__)

HOLD_CAP = 2.0  # longest pause between two tries of a delivery held in place


class Verdict(enum.StrEnum):
    """How a delivery is settled, as the `outcome` of messaging.client.consumed.messages (BUSY
    is never settled: it is waited out)."""

    ACK = "ack"
    DUPLICATE = "duplicate"
    RETRY = "nak"
    BUSY = "busy"
    DEAD = "term"


class Outcome(NamedTuple):
    """A named tuple: built for every delivery, where a frozen dataclass costs several times
    as much."""

    verdict: Verdict
    delay: float = 0.0  # RETRY and BUSY: seconds until the next try
    failure: Failure = NO_RESULT  # DEAD: why, as the dead-letter record keeps it


ACKED = Outcome(Verdict.ACK)
DUPLICATE = Outcome(Verdict.DUPLICATE)
GIVEN_UP = Outcome(Verdict.DEAD)

DELIVERY_MARGIN = 5
"""Deliveries a message may get beyond APP_MAX_DELIVER. Some deliveries never reach a handler:
taken by an instance frozen or cut before it ran them, or lost with a broker's leader. They do
not spend the message's tries: past APP_MAX_DELIVER the handler still runs, and a failure there
dead-letters the message. Only a message delivered `max_deliver + DELIVERY_MARGIN` times with no
handler ending on the last is given up on unrun: it may be what kills the instances taking it."""

LAG_REFRESH = 5.0
"""Seconds between reads of a consumer's backlog from its broker: on an interval, never per
message."""
"""The last delivery came with no handler having ended on it: given up on."""


def judge(result: bool | BaseException, attempt: int, max_deliver: int) -> Outcome:
    """What the end of a handler means for its delivery: the one place this is decided."""
    if result is True:
        return ACKED
    if result is False:
        return DUPLICATE
    if isinstance(result, NewerSchemaError) and attempt < max_deliver:
        # A rolling deploy: give the instances of the new version time to take it.
        return Outcome(Verdict.RETRY, delay=backoff(attempt, base=1.0, cap=30.0))
    if isinstance(result, DecodeError):
        return Outcome(Verdict.DEAD, failure=Failure(result.reason, str(result), _type(result)))
    if isinstance(result, HELD) and not isinstance(result, MessageTooLargeError):
        return Outcome(Verdict.BUSY, delay=backoff(attempt, base=0.2, cap=HOLD_CAP))
    if attempt >= max_deliver:
        failure = Failure(DeadLetterReason.MAX_DELIVERIES, describe(result), _type(result))
        return Outcome(Verdict.DEAD, failure=failure)
    return Outcome(Verdict.RETRY, delay=backoff(attempt, base=0.2, cap=10.0))


HELD: tuple[type[BaseException], ...] = (
    ClaimBusy,
    PublishError,
    BrokerUnavailableError,
    DiscoveryError,
    ConnectionError,
    TimeoutError,
)
"""Waiting, not failing: the QoS 2 claim is busy, or a broker or store the handler needs did
not answer (an oversized message it publishes is its own fault, and fails as usual)."""


class Settlement(Protocol):
    """What a transport does with one delivery, once the router has decided."""

    async def ack(self) -> None: ...

    async def nak(self, delay: float) -> None:
        """Hand it back: it comes again after `delay` seconds, as its next delivery."""
        ...

    async def dead_letter(self, failure: Failure) -> None:
        """Copy it to the dead-letter store and settle it there (or leave it to come again
        when the copy fails)."""
        ...


async def run_delivery(
    handler: Callable[[Envelope, Delivery], Awaitable[bool]],
    envelope: Envelope,
    delivery: Delivery,
    stopping: Callable[[], bool],
    hold_for: float,
) -> Outcome:
    """Run the handler until its outcome can be settled: BUSY and infrastructure errors are
    tried again in place (the transport keeps the delivery alive meanwhile) for up to
    `hold_for` seconds, or until the consumer stops; then the delivery is handed back."""
    try:
        if await handler(envelope, delivery):  # the common case, with nothing else to decide
            return ACKED
        return DUPLICATE
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        outcome = judge(exc, delivery.attempt, delivery.max_attempts)
    if outcome.verdict is not Verdict.BUSY:
        return outcome
    tries = 0
    held_until = time.monotonic() + hold_for
    while outcome.verdict is Verdict.BUSY:
        if stopping() or time.monotonic() > held_until:
            return Outcome(Verdict.RETRY, delay=outcome.delay)
        tries += 1
        if tries == 1:
            log.info("delivery %s held, trying again in place", delivery.message_id)
        await asyncio.sleep(backoff(tries, base=0.2, cap=HOLD_CAP))
        result: bool | BaseException
        try:
            result = await handler(envelope, delivery)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            result = exc
        outcome = judge(result, delivery.attempt, delivery.max_attempts)
    return outcome


async def settle(delivery: Settlement, outcome: Outcome, metrics: ConsumerMetrics) -> None:
    """Carry out `outcome` on `delivery` and count it."""
    verdict = outcome.verdict
    if verdict is Verdict.ACK or verdict is Verdict.DUPLICATE:
        await delivery.ack()
    elif verdict is Verdict.DEAD:
        await delivery.dead_letter(outcome.failure)
    else:
        await delivery.nak(outcome.delay)
    metrics.consumed[verdict.value].add(1)


def _type(exc: BaseException) -> str:
    return type(exc).__name__


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:1000]


class ConsumerMetrics:
    """The series one consumer records to, bound once."""

    def __init__(self, system: str, subject: str, qos: QoS, destination: str) -> None:
        attributes: dict[str, str | int] = {
            "messaging.system": system,
            "messaging.destination.name": subject,
            "qos": int(qos),
        }
        self.consumed = consumed_series(attributes)
        self.durations = process_duration.series(attributes)
        self.redelivered = redeliveries.series(
            {"messaging.system": system, "destination": destination}
        )


GiveBack = Callable[[], Awaitable[None]]


async def _keep() -> None:
    """Nothing to give back: the broker hands the delivery out again by itself."""


class HandlerTasks:
    """A consumer's running handlers: at most `limit` at once, each in its own task.

    Consumers ask the broker for messages in batches, not one per freed slot: `wait_for_room`
    returns once a quarter of the slots are free. `reserved` counts slots promised to messages
    asked for and not yet arrived. A delivery that arrives with every slot taken (a broker can
    deliver more than was asked, e.g. requests a reconnect sent twice) waits in a backlog for a
    slot: it never runs beyond the limit. The consumer keeps a waiting delivery alive meanwhile.
    """

    def __init__(self, limit: int, reserved: Callable[[], int] = lambda: 0) -> None:
        self.limit = limit
        self.batch = max(1, limit // 4)
        self._reserved = reserved
        self._tasks: dict[asyncio.Task[None], float] = {}  # -> when its delivery arrived
        self._backlog: deque[tuple[Coroutine[Any, Any, None], GiveBack, float]] = deque()
        self._room = asyncio.Event()
        self.most = 0  # the most handlers ever running at once

    def free(self) -> int:
        return self.limit - len(self._tasks) - len(self._backlog) - self._reserved()

    def has_room(self) -> bool:
        return self.free() >= self.batch

    def start(self, handling: Coroutine[Any, Any, None], give_back: GiveBack = _keep) -> None:
        """Run `handling` now, or once a slot frees; `give_back` is called instead when the
        consumer stops before it could run."""
        self._start(handling, give_back, time.monotonic())

    def _start(self, handling: Coroutine[Any, Any, None], give_back: GiveBack, at: float) -> None:
        if len(self._tasks) >= self.limit:
            self._backlog.append((handling, give_back, at))
            return
        task = asyncio.create_task(handling)
        self._tasks[task] = at
        self.most = max(self.most, len(self._tasks))
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)
        if self._backlog:
            self._start(*self._backlog.popleft())
        if self.has_room():
            self._room.set()

    def oldest_unacked(self) -> float:
        """Seconds since the oldest delivery still held here arrived (0 with none): its handler
        runs, or waits for a slot, and it is not settled yet. Read on a scrape, not per message."""
        # Copied in one step each: a metrics reader may call this from its own thread.
        tasks, backlog = tuple(self._tasks.values()), tuple(self._backlog)
        arrived = [*tasks, *(at for *_, at in backlog)]
        return time.monotonic() - min(arrived) if arrived else 0.0

    def wake(self) -> None:
        """End a `wait_for_room` now (the consumer has something else to look at)."""
        self._room.set()

    async def wait_for_room(self, timeout: float | None = None) -> None:
        """Wait for room for a batch, a `wake`, or `timeout` seconds, whichever comes first."""
        self._room.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._room.wait(), timeout)

    async def drain(self, timeout: float) -> None:
        """Give back what waits for a slot, give the running handlers `timeout` seconds, then
        cancel the rest."""
        while self._backlog:
            handling, give_back, _ = self._backlog.popleft()
            handling.close()
            await give_back()
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=2)
