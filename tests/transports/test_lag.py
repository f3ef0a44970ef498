"""How far behind a consumer is, on every transport: `qosmesh.consumer.pending` (waiting +
delivered and unacked, read from the broker on an interval) and
`qosmesh.consumer.oldest_unacked` (the age of the oldest delivery held and not acked) rise
under a stalled handler and fall back once it moves."""

from __future__ import annotations

import asyncio
import time

import pytest

from app.testing import eventually
from app.transports import consuming
from tests.transports.conftest import FAST_BUS, Ping, running_bus

STALLED = 5


@pytest.fixture(params=["jetstream", "redis"])
def lag_settings(request, settings_for, nats_server, monkeypatch):
    monkeypatch.setattr(consuming, "LAG_REFRESH", 0.2)
    values = {"nats_url": nats_server.url, **FAST_BUS, "ack_wait": 30}
    if request.param == "redis":
        redis_server = request.getfixturevalue("redis_server")
        values |= {"redis_url": redis_server.url, "qos1_transport": "redis"}
    values["redis_claim_idle"] = 30
    return request.param, settings_for(**values)


async def test_pending_and_the_oldest_unacked_age_rise_under_a_stalled_handler(
    lag_settings, metrics
):
    transport, settings = lag_settings
    system = "nats" if transport == "jetstream" else "redis"
    release = asyncio.Event()
    handled: list[int] = []

    async def stalled(message: Ping) -> None:
        await release.wait()
        handled.append(message.n)

    def read() -> tuple[float, float]:
        labels = {"messaging.system": system, "consumer": "svc__ping"}
        pending = metrics.value("qosmesh.consumer.pending", **labels)
        return pending, metrics.value("qosmesh.consumer.oldest_unacked", **labels)

    async with running_bus(settings, lambda bus: bus.subscribe(Ping, stalled)) as running:
        started = time.monotonic()
        for n in range(STALLED):
            await running.bus.publish(Ping(n=n))
        await eventually(lambda: read()[0] == STALLED, timeout=10)
        await asyncio.sleep(1.0)
        pending, age = read()
        print(f"{transport}: stalled, pending {pending:.0f}, oldest unacked {age:.2f} s")
        assert pending == STALLED
        assert 1.0 <= age <= time.monotonic() - started + 0.1
        await asyncio.sleep(0.5)
        assert read()[1] >= age + 0.4  # it keeps growing while nothing moves

        release.set()
        await eventually(lambda: sorted(handled) == list(range(STALLED)), timeout=10)
        await eventually(lambda: read() == (0, 0), timeout=10)
        print(f"{transport}: released, pending and oldest unacked {read()}")
