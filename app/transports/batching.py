"""Many concurrent calls, one round trip: a small batcher for pipelined broker commands."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Batcher(Generic[T, R]):
    """Sends concurrent calls together: whatever queued while a flush was on its way goes out
    in the next one (up to `size` items, `parallel` flushes at once); each caller gets its own
    result or exception. A lone call goes out at once."""

    def __init__(
        self,
        flush: Callable[[list[T]], Awaitable[Sequence[R | BaseException]]],
        size: int = 128,
        parallel: int = 4,
    ) -> None:
        self._flush = flush
        self._size = size
        self._parallel = parallel
        self._queue: list[tuple[T, asyncio.Future[R]]] = []
        self._running = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, item: T) -> asyncio.Future[R]:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if self._running < self._parallel:
            self._running += 1
            task = asyncio.create_task(self._drain())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return future

    async def _drain(self) -> None:
        try:
            await asyncio.sleep(0)  # callers started in the same tick join this batch
            while self._queue:
                batch = [(i, f) for i, f in self._queue[: self._size] if not f.done()]
                del self._queue[: self._size]
                if batch:
                    await self._send(batch)
        finally:
            self._running -= 1

    async def _send(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            results: Sequence[R | BaseException] = await self._flush([i for i, _ in batch])
        except Exception as exc:
            results = [exc] * len(batch)
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def close(self) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=2)
