"""What every acking consumer shares: its running handlers, bounded, and its metric series."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from app.messages import QoS
from app.telemetry import consumed_series, process_duration, redeliveries


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
        self._tasks: set[asyncio.Task[None]] = set()
        self._backlog: deque[tuple[Coroutine[Any, Any, None], GiveBack]] = deque()
        self._room = asyncio.Event()
        self.most = 0  # the most handlers ever running at once

    def free(self) -> int:
        return self.limit - len(self._tasks) - len(self._backlog) - self._reserved()

    def has_room(self) -> bool:
        return self.free() >= self.batch

    def start(self, handling: Coroutine[Any, Any, None], give_back: GiveBack = _keep) -> None:
        """Run `handling` now, or once a slot frees; `give_back` is called instead when the
        consumer stops before it could run."""
        if len(self._tasks) >= self.limit:
            self._backlog.append((handling, give_back))
            return
        task = asyncio.create_task(handling)
        self._tasks.add(task)
        self.most = max(self.most, len(self._tasks))
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if self._backlog:
            self.start(*self._backlog.popleft())
        if self.has_room():
            self._room.set()

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
            handling, give_back = self._backlog.popleft()
            handling.close()
            await give_back()
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=2)
