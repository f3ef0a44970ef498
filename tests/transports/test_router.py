"""The QoS router on the in-memory transport: routing, overrides, competing and broadcast."""

import asyncio

import pytest

from app.bus import Bus
from app.errors import ConfigurationError
from app.qos.claims import MemoryClaimStore
from app.settings import Settings
from app.testing import eventually
from app.transports.memory import MemoryTransport
from tests.transports.conftest import Charge, Notice, Ping


def memory_bus(**overrides: object) -> tuple[Bus, MemoryTransport]:
    settings = Settings.model_validate(
        {
            "qos0_transport": "memory",
            "qos1_transport": "memory",
            "qos2_transport": "memory",
            "max_deliver": 3,
            **overrides,
        }
    )
    transport = MemoryTransport(settings)
    bus = Bus(settings, {"memory": transport}, {"memory": MemoryClaimStore(60)}, "i1")
    return bus, transport


def test_qos1_on_a_transport_without_acks_is_refused():
    settings = Settings.model_validate({"qos1_transport": "nats"})
    bus = Bus(settings, {}, {}, "i1")
    with pytest.raises(ConfigurationError, match="no persistence"):
        bus.route(Ping)


def test_override_changes_qos_and_transport_per_type():
    settings = Settings.model_validate(
        {"qos_overrides": {"Notice": {"qos": 1, "transport": "memory"}}}
    )
    transport = MemoryTransport(settings)
    bus = Bus(settings, {"memory": transport}, {}, "i1")
    qos, chosen = bus.route(Notice)
    assert int(qos) == 1
    assert chosen is transport


async def test_competing_handlers_share_and_broadcast_handlers_all_receive():
    bus, _ = memory_bus()
    got: dict[str, list[int]] = {"a": [], "b": [], "c": []}
    for name in ("a", "b"):
        bus.subscribe(Ping, collector(got[name]))
    bus.subscribe(Ping, collector(got["c"]), broadcast=True)
    await bus.start()
    for n in range(10):
        await bus.publish(Ping(n=n))
    await eventually(lambda: len(got["a"]) + len(got["b"]) == 10 and len(got["c"]) == 10)
    assert sorted(got["a"] + got["b"]) == list(range(10))
    assert got["a"]
    assert got["b"]


async def _append(target: list[int], value: int) -> None:
    target.append(value)


def collector(target: list[int]):
    async def handle(message: Ping) -> None:
        target.append(message.n)

    return handle


async def test_failing_handler_is_retried_then_dead_lettered_and_replayable():
    bus, transport = memory_bus()
    calls: list[int] = []
    fixed = asyncio.Event()

    async def handle(message: Ping) -> None:
        calls.append(message.n)
        if not fixed.is_set():
            raise RuntimeError("downstream is down")

    bus.subscribe(Ping, handle)
    await bus.start()
    await bus.publish(Ping(n=1))
    await eventually(lambda: len(transport.dead_letters._items) == 1)
    assert calls == [1, 1, 1]
    page = await transport.dead_letters.list(10, None)
    assert page.items[0].error == "RuntimeError: downstream is down"
    assert page.items[0].deliveries == 3

    fixed.set()
    await transport.dead_letters.replay(page.items[0].dlq_id)
    await eventually(lambda: len(calls) == 4)
    assert (await transport.dead_letters.list(10, None)).total == 0


async def test_qos2_handler_runs_once_per_message_id():
    bus, _ = memory_bus()
    seen: list[int] = []
    bus.subscribe(Charge, lambda m: _append(seen, m.n))
    await bus.start()
    charge = Charge(n=5)
    await bus.publish(charge)
    await bus.publish(charge)
    await asyncio.sleep(0.1)
    assert seen == [5]
