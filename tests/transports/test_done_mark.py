"""A QoS 2 handler whose done mark cannot be written for a while (the idempotency store away)
is not run again: the mark alone is retried, and the message is acked once it is written."""

import asyncio
import time

import pytest

from app.errors import StoreUnavailableError
from app.qos.claims import Claim
from app.testing import eventually
from tests.transports.conftest import Charge, bus_settings, running_bus
from tests.transports.test_redis import redis_settings

pytestmark = pytest.mark.slow  # long: run in CI, left out of a generated project's quick run

__all__ = ["bus_settings", "redis_settings"]  # the fixtures, shared with the transport tests

AWAY = 8.0


@pytest.mark.parametrize("transport", ["jetstream", "redis"])
async def test_a_done_mark_that_fails_for_8_s_never_runs_the_handler_twice(
    transport, bus_settings, redis_settings
):
    settings = bus_settings(ack_wait=2) if transport == "jetstream" else redis_settings(ack_wait=2)
    applied: list[float] = []

    async def charge(message: Charge) -> None:
        applied.append(time.monotonic())

    async with running_bus(settings, lambda bus: bus.subscribe(Charge, charge)) as running:
        store = running.transports.claim_stores[transport]
        real_complete = store.complete
        marks: list[float] = []
        back_at = time.monotonic() + 1e9

        async def complete(claim: Claim) -> None:
            marks.append(time.monotonic())
            if time.monotonic() < back_at:
                raise StoreUnavailableError("idempotency store: frozen")
            await real_complete(claim)

        store.complete = complete  # type: ignore[method-assign]
        back_at = time.monotonic() + AWAY
        await running.bus.publish(Charge(n=1))
        await eventually(lambda: bool(marks) and marks[-1] >= back_at, timeout=AWAY + 20)
        await asyncio.sleep(3 * 2)  # past a stale claim and a redelivery, were there one
        pending = await _unsettled(running, transport)
    assert len(applied) == 1, f"applied {len(applied)} times"
    assert marks, "no done mark was tried"
    assert marks[-1] >= back_at, "the mark never went through after the store came back"
    assert len(marks) >= 3  # tried again while the store was away
    assert pending == 0  # acked once the mark was written


async def _unsettled(running, transport: str) -> int:
    if transport == "jetstream":
        info = await running.brokers.js.consumer_info("SVC_CHARGE", "svc__charge")
        return int(info.num_ack_pending + info.num_pending)
    redis = running.brokers.redis
    return int((await redis.xpending("svc.charge", "svc"))["pending"])
