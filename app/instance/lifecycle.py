"""Graceful drain: how an instance stops without losing what it holds.

On SIGTERM (or at shutdown, whichever comes first) the instance, in this order:
1. turns /readyz to 503, so load balancers stop sending it requests;
2. leaves discovery, so peers and peer clients stop choosing it;
3. stops taking messages, lets in-flight handlers finish for up to APP_DRAIN_TIMEOUT seconds,
   acks what finished and hands the rest back to the broker for another instance.
Meanwhile uvicorn finishes in-flight HTTP requests; then the lifespan closes the brokers.
"""

from __future__ import annotations

import asyncio
import logging

from app.errors import DiscoveryError
from app.instance.readiness import Readiness
from app.instance.runtime import Rebuilder

log = logging.getLogger(__name__)


class Drain:
    def __init__(self, readiness: Readiness, rebuilder: Rebuilder, timeout: float):
        self._readiness = readiness
        self._rebuilder = rebuilder
        self._timeout = timeout
        self._loop = asyncio.get_running_loop()
        self._task: asyncio.Future[None] | None = None

    def begin(self) -> asyncio.Future[None]:
        """Start draining (once); the returned future completes when messages are settled."""
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())
        return self._task

    def begin_from_signal(self) -> None:
        """Safe to call from a signal handler: schedules `begin` on the service's loop."""
        self._loop.call_soon_threadsafe(self.begin)

    async def _run(self) -> None:
        self._readiness.draining = True
        self._rebuilder.hold()  # the parts in use now are the ones to drain
        runtime = self._rebuilder.current
        if runtime is None:
            log.info("draining: nothing to drain (the broker connections were being rebuilt)")
            return
        log.info("draining: readiness off, leaving discovery")
        try:
            await runtime.discovery.deregister()
        except DiscoveryError as exc:
            log.warning("%s", exc)
        await runtime.bus.stop(self._timeout)
        log.info("drained: consumers stopped")
