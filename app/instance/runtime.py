"""The instance's broker-bound parts, built together and built again together.

nats-py can close a connection for good: after a protocol error (the server's answer to a frame
over its payload limit, for one) it does not reconnect. Everything that holds the connection
then holds a dead one: the bus and its consumers, the KV stores, discovery. The rebuilder
watches for that, and for a supervised task that died, and builds all of them again, retrying
until the brokers can be reached. The HTTP endpoints take the parts from `Services`, which asks
the rebuilder for its current runtime on every request, so they use the new ones at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

from app.brokers import BROKER_ERRORS, Brokers, open_brokers
from app.bus import Bus
from app.coordination import scheduling
from app.coordination.leases import Leases, singleton
from app.discovery import Discovery, open_discovery
from app.instance.micro import MicroService
from app.peers import PeerClient
from app.qos.dead_letters import DeadLetters
from app.settings import Settings
from app.supervision import Supervision, supervised
from app.transports.registry import build_transports, needs_redis

if TYPE_CHECKING:
    from app.database.connection import Database

log = logging.getLogger(__name__)

WATCH_EVERY = 0.5
RETRY_CAP = 5.0
REBUILD_DRAIN = 2.0


@dataclass(slots=True, frozen=True)
class Runtime:
    brokers: Brokers
    discovery: Discovery
    peers: PeerClient
    bus: Bus
    dead_letters: DeadLetters
    domain: Any
    leases: Leases


@asynccontextmanager
async def open_runtime(
    settings: Settings,
    domain: ModuleType | None,
    instance_id: str,
    database: Database | None = None,
) -> AsyncIterator[Runtime]:
    """Brokers, discovery, the peer client and the bus with the domain's handlers; closed in
    reverse order (consumers stop before discovery leaves and the brokers close)."""
    async with AsyncExitStack() as stack:
        brokers = await stack.enter_async_context(
            open_brokers(settings, redis=needs_redis(settings))
        )
        discovery = await stack.enter_async_context(
            open_discovery(brokers, settings, node_id=instance_id)
        )
        # Closed after the messaging stops, so handlers may call peers while draining.
        peers = await stack.enter_async_context(PeerClient(discovery))
        transports = await build_transports(settings, brokers)
        bus = Bus(settings, transports.by_name, transports.claim_stores, instance_id, database)
        state = await domain.setup(bus, brokers, settings) if domain is not None else None
        await bus.start()
        stack.push_async_callback(bus.stop, settings.drain_timeout)
        micro = MicroService(brokers.nc, settings, instance_id, bus)
        await micro.start()
        stack.push_async_callback(micro.stop)  # before the bus stops: no answers while draining
        leases = await stack.enter_async_context(_leases(brokers, settings, instance_id, discovery))
        # The domain's periodic jobs that run on one instance at a time (`singletons`).
        for job in getattr(domain, "singletons", lambda state, instance: [])(state, instance_id):
            task = supervised(singleton(leases, job.name, job.every)(job.job)(), job.name)
            stack.push_async_callback(_cancelled, task)  # stopped first, then leases released
        for name, coroutine in scheduling.jobs(transports.by_name, leases):
            stack.push_async_callback(_cancelled, supervised(coroutine, name))
        yield Runtime(brokers, discovery, peers, bus, DeadLetters(bus.dead_letters), state, leases)


async def _cancelled(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.wait({task}, timeout=2)


@asynccontextmanager
async def _leases(
    brokers: Brokers, settings: Settings, instance_id: str, discovery: Discovery
) -> AsyncIterator[Leases]:
    """This instance's leases; the ones it holds are in its discovery metadata (`leases`)."""
    leases = await Leases.open(brokers, settings, instance_id)
    updates: set[asyncio.Task[None]] = set()

    async def publish(held: list[str]) -> None:
        metadata = {**discovery.self_info.metadata, "leases": ",".join(held)}
        try:
            await discovery.set_metadata(metadata)
        except Exception as exc:  # the next change or heartbeat carries it
            log.warning("leases not in discovery metadata: %s", exc)

    def changed(held: list[str]) -> None:
        task = asyncio.create_task(publish(held))
        updates.add(task)
        task.add_done_callback(updates.discard)

    leases.on_change = changed
    try:
        yield leases
    finally:
        leases.on_change = None
        await leases.close()


class Rebuilder:
    """Owns the current Runtime; replaces it when its NATS client closed for good or one of its
    supervised tasks died."""

    def __init__(
        self,
        settings: Settings,
        domain: ModuleType | None,
        instance_id: str,
        supervision: Supervision,
        database: Database | None = None,
    ) -> None:
        self._settings = settings
        self._database = database
        self._domain = domain
        self._instance_id = instance_id
        self._supervision = supervision
        self._stack: AsyncExitStack | None = None
        self._task: asyncio.Task[None] | None = None
        self._holding = False
        self.current: Runtime | None = None

    async def start(self) -> Runtime:
        """Build the first runtime and begin watching it. A broker that answers slowly for a
        moment (a new replicated stream electing its leader, a loaded cluster) is waited out
        for up to APP_NATS_CONNECT_TIMEOUT; anything else stops the start."""
        give_up = time.monotonic() + self._settings.nats_connect_timeout
        delay = 0.25
        while True:
            try:
                runtime = await self._build()
                break
            except BROKER_ERRORS as exc:
                if time.monotonic() + delay > give_up:
                    raise
                log.warning("start: a broker did not answer (%r); trying again", exc)
                await asyncio.sleep(delay)
                delay = min(RETRY_CAP, delay * 2)
        self._task = supervised(self._watch(), "rebuilder")
        return runtime

    def hold(self) -> None:
        """Stop replacing parts: the instance is draining."""
        self._holding = True

    async def stop(self) -> None:
        self.hold()
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=2)
        await self._close()

    async def readiness(self) -> dict[str, str]:
        runtime = self.current
        if runtime is None:
            return {"nats": "reconnecting"}
        checks = await runtime.brokers.readiness()
        checks.update(await runtime.discovery.readiness())
        return checks

    async def _build(self) -> Runtime:
        stack = AsyncExitStack()
        try:
            runtime = await stack.enter_async_context(
                open_runtime(self._settings, self._domain, self._instance_id, self._database)
            )
        except BaseException:
            await stack.aclose()
            raise
        self._stack, self.current = stack, runtime
        return runtime

    async def _close(self) -> None:
        stack, self._stack, self.current = self._stack, None, None
        if stack is not None:
            with contextlib.suppress(Exception):
                await stack.aclose()

    def _broken(self) -> str | None:
        runtime = self.current
        if runtime is not None and runtime.brokers.nc.is_closed:
            return "the NATS connection closed for good"
        if self._supervision.deaths:
            return f"task {', '.join(sorted(self._supervision.deaths))} died"
        return None

    async def _watch(self) -> None:
        while not self._holding:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._supervision.wake.wait(), WATCH_EVERY)
            self._supervision.wake.clear()
            why = None if self._holding else self._broken()
            if why is not None:
                await self._replace(why)

    async def _replace(self, why: str) -> None:
        log.error("%s: building the broker connections and everything on them again", why)
        # The old parts hold a dead connection: their handlers get a short drain at most.
        if self.current is not None:
            with contextlib.suppress(Exception):
                await self.current.bus.stop(min(REBUILD_DRAIN, self._settings.drain_timeout))
        await self._close()
        self._supervision.forget()
        delay = 0.25
        while not self._holding:
            try:
                await self._build()
            except Exception as exc:
                log.warning("rebuild failed, retrying in %.2fs: %s", delay, exc)
                await asyncio.sleep(delay)
                delay = min(RETRY_CAP, delay * 2)
                continue
            log.info("broker connections and their parts built again")
            return
