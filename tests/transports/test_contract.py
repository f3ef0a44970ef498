"""What every acking transport promises, run on each of them with real brokers."""

import asyncio
from collections.abc import Callable

import pytest

from app.messages import Envelope, QoS, encode
from app.settings import Settings
from app.testing import eventually
from app.transports.redis_dlq import DEDUPE_ID
from tests.transports.conftest import Charge, Ping, bus_settings, running_bus
from tests.transports.test_redis import redis_settings

__all__ = ["bus_settings", "redis_settings"]  # the fixtures, shared with the transport tests

TRANSPORTS = ["jetstream", "redis"]


@pytest.fixture(params=TRANSPORTS)
def contract_settings(request) -> Callable[..., Settings]:
    """Settings for a bus whose QoS 1 and 2 ride on the transport under test; a delivery (or
    entry) left alone for about a second goes to another instance."""
    if request.param == "jetstream":
        make = request.getfixturevalue("bus_settings")
        return lambda **overrides: make(**{"ack_wait": 1, **overrides})
    make = request.getfixturevalue("redis_settings")
    return lambda **overrides: make(**{"redis_claim_idle": 1, **overrides})


@pytest.mark.parametrize("kind", [Ping, Charge])
async def test_a_handler_running_through_a_drain_is_not_given_to_another_instance(
    contract_settings, kind
):
    """SIGTERM while a handler runs longer than the ack wait: the draining instance keeps its
    delivery alive until the handler ends, so the effect is applied once, by it."""
    effects: list[str] = []
    started = asyncio.Event()

    def handler(name: str):
        async def handle(message: Ping | Charge) -> None:
            effects.append(name)
            started.set()
            await asyncio.sleep(3)

        return handle

    settings = contract_settings(drain_timeout=6)
    async with (
        running_bus(settings, lambda bus: bus.subscribe(kind, handler("A"))) as a,
        running_bus(settings, lambda bus: bus.subscribe(kind, handler("B")), instance="i2") as b,
    ):
        await a.bus.publish(kind(n=1))
        await asyncio.wait_for(started.wait(), 10)
        leaving = a if effects == ["A"] else b
        await leaving.bus.stop(settings.drain_timeout)  # returns when the handler ended
        staying = b if leaving is a else a
        await staying.bus.publish(kind(n=2))
        await eventually(lambda: len(effects) == 2, timeout=10, message="the next message")
        await asyncio.sleep(1.5)  # past another ack wait: a redelivery would show by now
    assert effects[0] != effects[1]  # the first went to one instance, the second to the other
    assert len(effects) == 2, effects


async def test_a_copy_waiting_on_a_busy_claim_is_not_dead_lettered(contract_settings):
    """Two copies of one QoS 2 message (the broker's dedupe window passed, say): while one
    instance applies it, the other's copy waits for the claim instead of spending its
    deliveries on it, then is settled as a duplicate. Applied once, no dead letter."""
    effects: list[str] = []
    first = asyncio.Event()

    def handler(name: str):
        async def handle(message: Charge) -> None:
            effects.append(name)
            first.set()
            await asyncio.sleep(2.5)

        return handle

    settings = contract_settings(max_deliver=3)
    async with (
        running_bus(settings, lambda bus: bus.subscribe(Charge, handler("A"))) as a,
        running_bus(settings, lambda bus: bus.subscribe(Charge, handler("B")), instance="i2"),
    ):
        charge = Charge(n=1)
        await a.bus.publish(charge)
        await asyncio.wait_for(first.wait(), 10)
        transport = a.transports.by_name[settings.qos2_transport]
        again = encode(charge, QoS.EXACTLY_ONCE, a.bus.subject(Charge))
        copy = Envelope(
            headers={**again.headers, "Nats-Msg-Id": "copy-2"},
            body=again.body,
            subject=again.subject,
            extra={DEDUPE_ID: "copy-2"},
        )
        await transport.publish(copy, QoS.EXACTLY_ONCE)  # a second copy in the stream
        store = transport.dead_letters
        assert store is not None

        await asyncio.sleep(4)  # the copy waited out the claim and was settled by now
        dead = (await store.list(10, None)).total
    assert effects in (["A"], ["B"])
    assert dead == 0
