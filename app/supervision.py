"""The instance's long-lived tasks, and whether any of them died.

Consumer loops, the dead-letter advisory follower and the rebuilder itself start through
`supervised()`. A task that ends with an error is recorded; the rebuilder (`app.instance.runtime`)
answers by building the instance's broker-bound parts again. /healthz fails only when such a
death has stood for longer than `HEALTH_GRACE` seconds: the one case that restarting the
process can fix and nothing inside it will. An unreachable broker never fails it.

The record lives in a context variable, so every task an instance starts, and the tasks those
start, report to that instance's record even when several instances share a process (tests).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from contextvars import ContextVar
from typing import Any

log = logging.getLogger(__name__)

HEALTH_GRACE = 30.0


class Supervision:
    """Deaths of supervised tasks, by task name, since the last rebuild."""

    def __init__(self) -> None:
        self.deaths: dict[str, float] = {}
        self.wake = asyncio.Event()

    def start(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._ended)
        return task

    def _ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        log.error("task %r died: %r", task.get_name(), task.exception())
        self.deaths.setdefault(task.get_name(), time.monotonic())
        self.wake.set()

    def forget(self) -> None:
        """The parts whose tasks died are gone: what died with them is no longer a fault."""
        self.deaths.clear()

    def dead_for_long(self) -> list[str]:
        """Tasks dead for longer than HEALTH_GRACE seconds with no rebuild since."""
        limit = time.monotonic() - HEALTH_GRACE
        return sorted(name for name, at in self.deaths.items() if at < limit)


_current: ContextVar[Supervision | None] = ContextVar("supervision", default=None)


def use(supervision: Supervision) -> None:
    """Make `supervision` the record of this task and of every task it starts from now on."""
    _current.set(supervision)


def supervised(coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
    """Start `coro` as a task whose death is recorded (when an instance has a record)."""
    supervision = _current.get()
    if supervision is None:
        return asyncio.create_task(coro, name=name)
    return supervision.start(coro, name)
