"""An in-process broker for unit tests and single-process use.

It follows the same contract as the real transports, with these differences: nothing is
persisted (a process exit loses every message and dead letter), it reaches only subscribers in
this process, publish never fails, and QoS 0 is delivered like QoS 1 minus the retries.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import defaultdict
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from app.errors import DeadLetterNotFoundError
from app.messages import H_QOS, H_TYPE, Envelope, QoS
from app.observability.instruments import dead_letters, sent_messages
from app.observability.spans import send_span
from app.qos.claims import MemoryClaimStore
from app.qos.dead_letters import DeadLetter, DeadLetterDetail, DeadLetterPage, Failure
from app.settings import Settings
from app.transports.base import Delivery, Subscription
from app.transports.consuming import ConsumerMetrics, Verdict, run_delivery, settle
from app.transports.spec import Built, TransportSpec

if TYPE_CHECKING:
    from app.brokers import Brokers

HOLD_SECONDS = 5.0  # a busy claim or missing broker is waited out this long before a retry

log = logging.getLogger(__name__)


class MemoryTransport:
    name = "memory"

    def __init__(self, settings: Settings) -> None:
        self._max_deliver = settings.max_deliver
        self._concurrency = settings.consumer_concurrency
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._subscriptions: dict[str, list[Subscription]] = defaultdict(list)
        self._turn: dict[tuple[str, str], itertools.count[int]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.dead_letters = MemoryDeadLetters(self)
        self._consumer_metrics: dict[str, ConsumerMetrics] = {}
        self.schedules = None  # nothing is kept: delayed messages need a broker

    async def start(self) -> None:
        return None

    async def subscribe(self, subscription: Subscription) -> None:
        self._subscriptions[subscription.subject].append(subscription)

    async def publish(self, envelope: Envelope, qos: QoS) -> None:
        groups: dict[str | None, list[Subscription]] = defaultdict(list)
        for subscription in self._subscriptions.get(envelope.subject, []):
            groups[subscription.group].append(subscription)
        targets = list(groups.pop(None, []))
        for group, members in groups.items():
            turn = self._turn.setdefault((envelope.subject, str(group)), itertools.count())
            targets.append(members[next(turn) % len(members)])
        with send_span(envelope, qos, self.name):
            for subscription in targets:
                task = asyncio.create_task(self._deliver(subscription, envelope, qos))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        attrs = {"messaging.system": self.name, "messaging.destination.name": envelope.subject}
        sent_messages.add(1, {**attrs, "qos": int(qos), "outcome": "ok"})

    async def _deliver(self, subscription: Subscription, envelope: Envelope, qos: QoS) -> None:
        slots = self._slots.get(subscription.name)
        if slots is None:
            slots = self._slots[subscription.name] = asyncio.Semaphore(self._concurrency)
        async with slots:  # at most APP_CONSUMER_CONCURRENCY handlers per subscription
            await self._run(subscription, envelope, qos)

    async def _run(self, subscription: Subscription, envelope: Envelope, qos: QoS) -> None:
        tries = 1 if qos == QoS.AT_MOST_ONCE else self._max_deliver
        for attempt in range(1, tries + 1):
            delivery = Delivery(self.name, envelope.subject, attempt, tries, envelope.message_id)
            outcome = await run_delivery(
                subscription.handler,
                envelope,
                delivery,
                lambda: False,
                HOLD_SECONDS,
            )
            settlement = _Settlement(self, envelope, qos, attempt)
            await settle(settlement, outcome, self._metrics(subscription, qos))
            if outcome.verdict is not Verdict.RETRY:
                return
            log.info("handler failed for %s (try %d)", envelope.message_id, attempt)
            await asyncio.sleep(min(outcome.delay, 0.2))

    def _metrics(self, subscription: Subscription, qos: QoS) -> ConsumerMetrics:
        metrics = self._consumer_metrics.get(subscription.name)
        if metrics is None:
            metrics = ConsumerMetrics(self.name, subscription.subject, qos, subscription.subject)
            self._consumer_metrics[subscription.name] = metrics
        return metrics

    async def stop(self, timeout: float) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)


class _Settlement:
    """One in-process delivery as the router settles it: a retry is the delivery loop's next
    turn; QoS 0 has no dead letters (a failure is logged and counted)."""

    __slots__ = ("_attempt", "_envelope", "_qos", "_transport")

    def __init__(self, transport: MemoryTransport, envelope: Envelope, qos: QoS, attempt: int):
        self._transport = transport
        self._envelope = envelope
        self._qos = qos
        self._attempt = attempt

    async def ack(self) -> None:
        return None

    async def nak(self, delay: float) -> None:
        return None

    async def dead_letter(self, failure: Failure) -> None:
        if self._qos == QoS.AT_MOST_ONCE:
            log.info("QoS 0 message %s not handled: %s", self._envelope.message_id, failure.error)
            return
        self._transport.dead_letters.add(self._envelope, failure, self._attempt)


class MemoryDeadLetters:
    """Dead letters of the memory transport; ids look like `mem-<n>`."""

    prefix = "mem"

    def __init__(self, transport: MemoryTransport) -> None:
        self._transport = transport
        self._items: dict[int, tuple[DeadLetterDetail, Envelope]] = {}
        self._ids = itertools.count(1)

    def add(self, envelope: Envelope, failure: Failure, deliveries: int) -> None:
        number = next(self._ids)
        detail = DeadLetterDetail(
            dlq_id=f"{self.prefix}-{number}",
            message_id=envelope.message_id,
            type=envelope.headers.get(H_TYPE, ""),
            subject=envelope.subject,
            transport=self._transport.name,
            reason=failure.reason,
            error=failure.error,
            error_type=failure.error_type,
            deliveries=deliveries,
            dead_at=datetime.now(UTC),
            headers={**envelope.headers, **failure.record()},
            body=envelope.body.decode("utf-8", errors="replace"),
        )
        self._items[number] = (detail, envelope)
        dead_letters.add(
            1,
            {
                "messaging.system": self._transport.name,
                "destination": envelope.subject,
                "reason": failure.reason,
            },
        )

    def _number(self, dlq_id: str) -> int:
        kind, _, number = dlq_id.partition("-")
        if kind != self.prefix or not number.isdigit() or int(number) not in self._items:
            raise DeadLetterNotFoundError(dlq_id)
        return int(number)

    async def list(self, limit: int, cursor: str | None) -> DeadLetterPage:
        numbers = sorted(self._items, reverse=True)
        if cursor:
            numbers = [n for n in numbers if n <= int(cursor.partition("-")[2] or 0)]
        page = numbers[:limit]
        more = numbers[limit : limit + 1]
        return DeadLetterPage(
            items=[DeadLetter.model_validate(self._items[n][0].model_dump()) for n in page],
            total=len(self._items),
            next_cursor=f"{self.prefix}-{more[0]}" if more else None,
        )

    async def get(self, dlq_id: str) -> DeadLetterDetail:
        return self._items[self._number(dlq_id)][0]

    async def delete(self, dlq_id: str) -> None:
        del self._items[self._number(dlq_id)]

    async def replay(self, dlq_id: str) -> str:
        number = self._number(dlq_id)
        _, envelope = self._items.pop(number)
        await self._transport.publish(envelope, QoS(int(envelope.headers.get(H_QOS, "1"))))
        return envelope.message_id


async def _build(settings: Settings, brokers: Brokers) -> Built:
    return Built(MemoryTransport(settings), MemoryClaimStore(settings.idempotency_ttl))


SPEC = TransportSpec("memory", "memory", reliable=True, needs_redis=False, build=_build)
"""In-process: for tests and a single instance; it keeps nothing across a restart."""
