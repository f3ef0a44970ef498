"""Messages on the wire that are oversized, undecodable, of an unknown type or version go to
the dead-letter stream at once with their reason, are counted, and the consumer goes on."""

from app.messages import QoS, encode
from app.testing import eventually
from tests.transports.conftest import Ping, bus_settings, running_bus

__all__ = ["bus_settings"]  # the fixture, shared with the transport tests


async def test_hostile_messages_are_dead_lettered_with_their_reason(bus_settings, metrics):
    handled: list[int] = []

    async def handle(message: Ping) -> None:
        handled.append(message.n)

    settings = bus_settings(max_message_bytes=2048)
    async with running_bus(settings, lambda bus: bus.subscribe(Ping, handle)) as running:
        js = running.brokers.js
        good = encode(Ping(n=1), QoS.AT_LEAST_ONCE, "svc.ping")
        hostile = [
            (good.headers, b'{"n": 1, "pad": "' + b"x" * 4096 + b'"}'),  # oversized
            ({**good.headers, "qm-type": "Nope"}, good.body),  # unknown type
            ({**good.headers, "qm-version": "2"}, good.body),  # unknown envelope version
            ({**good.headers, "qm-schema": "99"}, good.body),  # newer schema
            (good.headers, b"\xff\xfe\x00"),  # not JSON
            ({}, b"no envelope at all"),
        ]
        for headers, body in hostile:
            await js.publish("svc.ping", body, headers=headers)
        await running.bus.publish(Ping(n=2))
        store = running.transports.by_name["jetstream"].dead_letters
        assert store is not None

        async def all_dead() -> bool:
            return (await store.list(20, None)).total == len(hostile)

        await eventually(lambda: handled == [2], timeout=10)
        await eventually(all_dead, timeout=10)
        items = (await store.list(20, None)).items
    reasons = sorted(item.reason for item in items)
    assert reasons == sorted(
        [
            "oversized",
            "unknown_type",
            "unknown_version",
            "unknown_version",
            "undecodable",
            "unknown_version",
        ]
    )
    assert all(item.deliveries == 1 for item in items)
    assert metrics.value("qosmesh.dead_letters", reason="oversized") >= 1
