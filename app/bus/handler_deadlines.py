"""Handler deadlines: a handler still running after its deadline (APP_HANDLER_TIMEOUT, or the
`timeout=` it was subscribed with) is cancelled and counted, and its delivery fails with
HandlerTimeoutError, retried or dead-lettered like any failed one, so a hung handler cannot
hold its slot for ever.

The deadline bounds the handler's own run. What comes around it is not cut: the QoS 2 claim
before it; its done mark, the inbox transaction's commit and the ack after it.

One sweep per bus watches the running handlers, instead of a loop timer per delivery
(`asyncio.timeout` arms and cancels one, about 5 µs a delivery, against under 1 µs here). It
wakes when the earliest running handler is due, and at least once per shortest deadline: a
handler that starts after a sweep is due no earlier than that, so none is cut late by more than
the event loop's own delay. A handler that swallows its cancellation, or blocks the event loop,
cannot be cut.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from app.errors import ConfigurationError, HandlerTimeoutError
from app.observability.instruments import Series

log = logging.getLogger(__name__)

Handler = Callable[..., Awaitable[None]]
Bounded = Callable[..., Coroutine[Any, Any, None]]

LONGEST_NAP = 60.0
"""Seconds the sweep sleeps at most, when no handler is registered at all."""


class HandlerDeadlines:
    """The deadlines of one bus's running handlers, and the sweep that cuts them."""

    def __init__(self) -> None:
        self._running: dict[asyncio.Task[Any], float] = {}  # -> when its handler is due
        self._cut: set[asyncio.Task[Any]] = set()  # cancelled by the sweep, not yet told
        self._shortest = math.inf

    def bounded(self, handler: Handler, seconds: float, consumer: str, timeouts: Series) -> Bounded:
        """`handler`, cancelled once it has run `seconds`: it then raises HandlerTimeoutError,
        counted in `timeouts`."""
        if not 0 < seconds < math.inf:
            raise ConfigurationError(
                f"{consumer}: a handler's timeout must be above 0 s: {seconds}"
            )
        self._shortest = min(self._shortest, seconds)
        running = self._running

        async def run(*args: Any) -> None:
            task = asyncio.current_task()
            assert task is not None  # a handler runs in a task
            running[task] = time.monotonic() + seconds
            try:
                await handler(*args)
            except (asyncio.CancelledError, Exception):
                if not self._told(task):
                    raise  # its own error, or cancelled by something else (a drain)
                # Cut: whatever the handler made of its cancellation, it ran past its deadline.
                timeouts.add()
                message_id = getattr(args[0], "message_id", "?") if args else "?"
                log.warning("%s: handler of %s cancelled after %g s", consumer, message_id, seconds)
                raise HandlerTimeoutError(
                    f"handler still running after {seconds:g} s (cancelled)"
                ) from None
            finally:
                running.pop(task, None)
                if task in self._cut:  # it swallowed the cancellation, and ended by itself
                    self._told(task)

        return run

    def _told(self, task: asyncio.Task[Any]) -> bool:
        """Whether the sweep cancelled `task` and nothing else cancels it too; the sweep's
        cancellation is taken back from the task's count either way."""
        if task not in self._cut:
            return False
        self._cut.discard(task)
        return task.uncancel() == 0

    async def sweep(self) -> None:
        """Cancel every handler past its deadline; runs until cancelled."""
        running, cut = self._running, self._cut
        while True:
            now = time.monotonic()
            wake = now + min(self._shortest, LONGEST_NAP)
            for task, due in list(running.items()):
                if due <= now:
                    del running[task]
                    cut.add(task)
                    task.cancel()
                else:
                    wake = min(wake, due)
            await asyncio.sleep(wake - now)
