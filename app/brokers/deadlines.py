"""Deadlines for many waiting requests, swept a few times a second.

A loop timer per request (`call_later` armed, then cancelled when the reply comes) costs about
3 µs under uvloop. Requests mostly share one timeout, so their deadlines come in order: those go
to the end of a queue (O(1)); one that would land before the queue's last waits in a heap. A
deadline fires up to one tick late.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections import deque
from collections.abc import Callable
from typing import Any

TICK = 0.05

_Entry = tuple[float, int, asyncio.Future[Any], Callable[[], BaseException]]


class Deadlines:
    def __init__(self, tick: float = TICK) -> None:
        self._tick = tick
        self._queue: deque[_Entry] = deque()  # deadlines in the order they fall
        self._heap: list[_Entry] = []  # the rest
        self._order = itertools.count()
        self._sweeper: asyncio.Task[None] | None = None

    def fail_after(
        self, future: asyncio.Future[Any], timeout: float, error: Callable[[], BaseException]
    ) -> None:
        """Fail `future` with `error()` if it is still pending `timeout` seconds from now."""
        entry = (time.monotonic() + timeout, next(self._order), future, error)
        queue = self._queue
        if not queue or queue[-1][0] <= entry[0]:
            queue.append(entry)
        else:
            heapq.heappush(self._heap, entry)
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.create_task(self._sweep())

    def _next(self) -> float | None:
        firsts = [entries[0][0] for entries in (self._queue, self._heap) if entries]
        return min(firsts) if firsts else None

    async def _sweep(self) -> None:
        queue, heap = self._queue, self._heap
        while (first := self._next()) is not None:
            await asyncio.sleep(min(self._tick, max(0.0, first - time.monotonic())))
            now = time.monotonic()
            while queue and queue[0][0] <= now:
                _fail(queue.popleft())
            while heap and heap[0][0] <= now:
                _fail(heapq.heappop(heap))


def _fail(entry: _Entry) -> None:
    _, _, future, error = entry
    if not future.done():
        future.set_exception(error())
