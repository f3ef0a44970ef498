"""What every case shares: the run's parameters, message types, and a bus on the brokers."""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from app.brokers import Brokers, open_brokers
from app.bus import Bus
from app.messages import Event, Message, QoS
from app.settings import Settings
from app.transports.registry import build_transports, needs_redis

_names = itertools.count()


@dataclass(slots=True, frozen=True)
class Env:
    nats_url: str  # JetStream sync_interval at the server's default (2m): the messaging rows
    nats_synced_url: str  # sync_interval always: the rows that price it
    redis_url: str
    tmp: Path
    messages: int
    slow_messages: int  # rows bound by one round trip per message
    size: int
    runs: int
    window: int
    http_seconds: float  # each service's load, per round
    http_clients: int
    discovery_samples: int


class Blob(Message):
    """QoS 1."""

    data: str


class NoticeBlob(Event):
    """QoS 0."""

    data: str


class ChargeBlob(Message):
    """QoS 2."""

    qos: ClassVar[QoS] = QoS.EXACTLY_ONCE
    data: str


def unique(prefix: str) -> str:
    """A fresh service name, so every run gets its own streams and consumers."""
    return f"{prefix}-{next(_names)}"


def settings(env: Env, service: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "nats_url": env.nats_url,
        "service_name": service,
        "data_dir": env.tmp / "data",
    }
    values.update(overrides)
    return Settings.model_validate(values)


@asynccontextmanager
async def running_bus(
    config: Settings, setup: Callable[[Bus], None] = lambda bus: None
) -> AsyncIterator[tuple[Bus, Brokers]]:
    async with AsyncExitStack() as stack:
        brokers = await stack.enter_async_context(open_brokers(config, redis=needs_redis(config)))
        transports = await build_transports(config, brokers)
        bus = Bus(config, transports.by_name, transports.claim_stores, "bench")
        setup(bus)
        await bus.start()
        try:
            yield bus, brokers
        finally:
            await bus.stop(5)


class Counter:
    """Counts handled messages and wakes a waiter when `target` is reached."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.count = 0
        self.done = asyncio.Event()

    def hit(self, n: int = 1) -> None:
        self.count += n
        if self.count >= self.target:
            self.done.set()

    async def wait(self, timeout: float = 300.0) -> None:
        await asyncio.wait_for(self.done.wait(), timeout)


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else 0.0


async def paired_rates(
    runs: int, ours: Callable[[], Awaitable[float]], raw: Callable[[], Awaitable[float]]
) -> tuple[float, float]:
    """The medians of `runs` results of each (rates), run in turns so that a shared machine
    slowing down for a while slows both sides alike."""
    results: tuple[list[float], list[float]] = ([], [])
    for _ in range(runs):
        results[0].append(await ours())
        results[1].append(await raw())
    return statistics.median(results[0]), statistics.median(results[1])


async def rates_with_peer(
    runs: int,
    ours: Callable[[], Awaitable[float]],
    raw: Callable[[], Awaitable[float]],
    peer: Callable[[], Awaitable[float]] | None,
) -> tuple[float, float, float | None]:
    """`paired_rates` with a third side, FastStream doing the same work (None: no peer row),
    the three in turns."""
    results: tuple[list[float], list[float], list[float]] = ([], [], [])
    for _ in range(runs):
        results[0].append(await ours())
        results[1].append(await raw())
        if peer is not None:
            results[2].append(await peer())
    medians = statistics.median(results[0]), statistics.median(results[1])
    return *medians, statistics.median(results[2]) if results[2] else None


class Clock:
    def __enter__(self) -> Clock:
        self.started = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.started
