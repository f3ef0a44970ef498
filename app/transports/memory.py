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

from app.errors import DeadLetterNotFoundError
from app.messages import H_QOS, H_TYPE, DecodeError, Envelope, QoS
from app.settings import Settings
from app.telemetry import dead_letters, sent_messages
from app.tracing import send_span
from app.transports.base import (
    DeadLetter,
    DeadLetterDetail,
    DeadLetterPage,
    Delivery,
    Subscription,
    backoff,
)

log = logging.getLogger(__name__)


class MemoryTransport:
    name = "memory"

    def __init__(self, settings: Settings) -> None:
        self._max_deliver = settings.max_deliver
        self._subscriptions: dict[str, list[Subscription]] = defaultdict(list)
        self._turn: dict[tuple[str, str], itertools.count[int]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.dead_letters = MemoryDeadLetters(self)

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
        with send_span(envelope, qos, "memory"):
            for subscription in targets:
                task = asyncio.create_task(self._deliver(subscription, envelope, qos))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        attrs = {"messaging.system": "memory", "messaging.destination.name": envelope.subject}
        sent_messages.add(1, {**attrs, "qos": int(qos), "outcome": "ok"})

    async def _deliver(self, subscription: Subscription, envelope: Envelope, qos: QoS) -> None:
        tries = 1 if qos == QoS.AT_MOST_ONCE else self._max_deliver
        error = ""
        for attempt in range(1, tries + 1):
            delivery = Delivery("memory", envelope.subject, attempt, tries, envelope.message_id)
            try:
                await subscription.handler(envelope, delivery)
                return
            except DecodeError as exc:
                self.dead_letters.add(envelope, exc.reason, str(exc), attempt)
                return
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                log.info("handler failed for %s (try %d): %s", envelope.message_id, attempt, exc)
            if attempt < tries:
                await asyncio.sleep(backoff(attempt, base=0.01, cap=0.2))
        if qos != QoS.AT_MOST_ONCE:
            self.dead_letters.add(envelope, "max_deliveries", error, tries)

    async def stop(self, timeout: float) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)


class MemoryDeadLetters:
    """Dead letters of the memory transport; ids look like `mem-<n>`."""

    prefix = "mem"

    def __init__(self, transport: MemoryTransport) -> None:
        self._transport = transport
        self._items: dict[int, tuple[DeadLetterDetail, Envelope]] = {}
        self._ids = itertools.count(1)

    def add(self, envelope: Envelope, reason: str, error: str, deliveries: int) -> None:
        number = next(self._ids)
        detail = DeadLetterDetail(
            dlq_id=f"{self.prefix}-{number}",
            message_id=envelope.message_id,
            type=envelope.headers.get(H_TYPE, ""),
            subject=envelope.subject,
            transport="memory",
            reason=reason,
            error=error,
            deliveries=deliveries,
            dead_at=datetime.now(UTC),
            headers={**envelope.headers, "qm-dlq-reason": reason},
            body=envelope.body.decode("utf-8", errors="replace"),
        )
        self._items[number] = (detail, envelope)
        dead_letters.add(
            1, {"messaging.system": "memory", "destination": envelope.subject, "reason": reason}
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
