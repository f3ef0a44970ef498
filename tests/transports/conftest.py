"""Buses on real brokers, and the test-only message types the framework tests use."""

from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import ClassVar

import pytest

from app.brokers import Brokers, open_brokers
from app.bus import Bus
from app.messages import Event, Message, QoS
from app.settings import Settings
from app.transports.registry import Transports, build_transports, needs_redis


class Ping(Message):
    n: int


class Notice(Event):
    n: int


class Charge(Message):
    qos: ClassVar[QoS] = QoS.EXACTLY_ONCE
    n: int


class Running:
    def __init__(self, bus: Bus, brokers: Brokers, transports: Transports) -> None:
        self.bus = bus
        self.brokers = brokers
        self.transports = transports


@asynccontextmanager
async def running_bus(
    settings: Settings, setup: Callable[[Bus], None] = lambda bus: None, instance: str = "i1"
) -> AsyncIterator[Running]:
    async with AsyncExitStack() as stack:
        brokers = await stack.enter_async_context(
            open_brokers(settings, redis=needs_redis(settings))
        )
        transports = await build_transports(settings, brokers)
        bus = Bus(settings, transports.by_name, transports.claim_stores, instance)
        setup(bus)
        await bus.start()
        try:
            yield Running(bus, brokers, transports)
        finally:
            await bus.stop(5)


FAST_BUS: dict[str, object] = {
    "service_name": "svc",
    "ack_wait": 2,
    "max_deliver": 3,
    "publish_attempt_timeout": 0.5,
    "publish_deadline": 3,
}
"""A bus's settings for tests: fast retries and redeliveries."""


@pytest.fixture
def bus_settings(settings_for, nats_server) -> Callable[..., Settings]:
    """Settings for a bus on the test nats-server, fast retries and redeliveries."""

    def make(**overrides: object) -> Settings:
        values: dict[str, object] = {"nats_url": nats_server.url, **FAST_BUS}
        values.update(overrides)
        return settings_for(**values)  # type: ignore[no-any-return]

    return make


@pytest.fixture
def untraced(monkeypatch: pytest.MonkeyPatch) -> None:
    """The batch path of publish_many, which runs only while nothing is traced (a traced
    batch publishes one by one, each in its own span); the test session installs a tracer."""
    monkeypatch.setattr("app.bus.router.sending_traced", lambda: False)
