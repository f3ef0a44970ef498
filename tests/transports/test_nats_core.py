"""QoS 0 on NATS core: delivered while the server is up, dropped and counted while it is down."""

import time

from app.bus import Bus
from app.testing import eventually
from tests.transports.conftest import Notice, running_bus


async def test_qos0_reaches_every_broadcast_subscriber(bus_settings):
    got: dict[str, list[int]] = {"i1": [], "i2": []}

    def listen(instance: str):
        def setup(bus: Bus) -> None:
            async def on_notice(message: Notice) -> None:
                got[instance].append(message.n)

            bus.subscribe(Notice, on_notice, broadcast=True)

        return setup

    settings = bus_settings()
    async with (
        running_bus(settings, listen("i1"), "i1") as first,
        running_bus(settings, listen("i2"), "i2"),
    ):
        await first.brokers.nc.flush()
        for n in range(50):
            await first.bus.publish(Notice(n=n))
        await eventually(lambda: len(got["i1"]) == 50 and len(got["i2"]) == 50)
    assert got["i1"] == got["i2"] == list(range(50))


async def test_qos0_with_the_server_down_returns_at_once_and_counts_each_loss(
    bus_settings, nats_server, metrics
):
    settings = bus_settings()
    async with running_bus(settings) as running:
        nats_server.kill()
        await eventually(lambda: not running.brokers.nc.is_connected)
        before = metrics.value("qosmesh.qos0.lost", **{"messaging.destination.name": "svc.notice"})
        started = time.monotonic()
        for n in range(100):
            await running.bus.publish(Notice(n=n))
        elapsed = time.monotonic() - started
        after = metrics.value("qosmesh.qos0.lost", **{"messaging.destination.name": "svc.notice"})
        nats_server.start()
    assert after - before == 100
    assert elapsed < 0.5
