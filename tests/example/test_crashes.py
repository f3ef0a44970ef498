"""The outbox and the inbox across a SIGKILL at the worst moment, on real processes: the
instance dies at an armed fail point, starts again, and nothing is lost or applied twice."""

import asyncio

import httpx
import nats
import pytest

from app.failpoints import ENV as FAILPOINTS
from app.testing import eventually

pytestmark = pytest.mark.slow

ORDER = {"sku": "crash-1", "quantity": 1}


def shop_env(nats_server, postgres_server) -> dict[str, str]:
    return {
        "APP_NATS_URL": nats_server.url,
        "APP_DATABASE_URL": postgres_server.url,
        "APP_DATABASE_MIGRATE": "true",
        "APP_ACK_WAIT": "2",
    }


async def stored(nats_server, stream: str) -> int:
    nc = await nats.connect(nats_server.url)
    try:
        return int((await nc.jetstream().stream_info(stream)).state.messages)
    except nats.js.errors.NotFoundError:
        return 0
    finally:
        await nc.close()


async def order(client: httpx.AsyncClient, order_id: str) -> dict[str, object]:
    return dict((await client.get(f"/orders/{order_id}")).json())


async def test_killed_between_commit_and_publish_the_event_goes_out_after_the_restart(
    service_process, nats_server, postgres_server
):
    """The relay has the committed row and dies before publishing it. The client, whose answer
    may have died with the instance, retries with its key after the restart: it gets the first
    try's order, whose event is published then, once, and the order confirmed."""
    env = shop_env(nats_server, postgres_server)
    service = service_process({**env, FAILPOINTS: "relay.before_publish"}, wait="/readyz")
    headers = {"Idempotency-Key": "crash-order-1"}
    async with httpx.AsyncClient(base_url=service.url, timeout=10) as client:
        try:
            first: httpx.Response | None = await client.post("/orders", json=ORDER, headers=headers)
        except httpx.HTTPError:
            first = None  # the instance died before answering
    assert service.proc is not None
    assert await asyncio.to_thread(service.proc.wait, 15) == -9
    assert await stored(nats_server, "QOSMESH_ORDER_PLACED") == 0

    del service.env[FAILPOINTS]
    service.start(wait="/readyz")
    async with httpx.AsyncClient(base_url=service.url, timeout=10) as client:
        again = await client.post("/orders", json=ORDER, headers=headers)
        assert again.status_code == 202
        if first is not None:
            assert again.json() == first.json()
        order_id = again.json()["order_id"]
        await eventually(lambda: _status_is(client, order_id, "confirmed"), timeout=20)
    await asyncio.sleep(1)
    assert await stored(nats_server, "QOSMESH_ORDER_PLACED") == 1


async def test_killed_after_a_handler_committed_the_redelivery_applies_nothing(
    service_process, nats_server, postgres_server
):
    """The payment handler's transaction commits and the instance dies before the ack. The
    broker redelivers to the restarted instance: the inbox finds the id, and the amount is
    added once."""
    env = shop_env(nats_server, postgres_server)
    service = service_process(env, wait="/readyz")
    async with httpx.AsyncClient(base_url=service.url, timeout=10) as client:
        placed = (await client.post("/orders", json=ORDER)).json()
        await eventually(lambda: _status_is(client, placed["order_id"], "confirmed"))
    service.stop()

    service.env[FAILPOINTS] = "inbox.before_ack"
    service.start(wait="/readyz")
    payment = {"Idempotency-Key": "pay-crash-1"}
    async with httpx.AsyncClient(base_url=service.url, timeout=10) as client:
        path = f"/orders/{placed['order_id']}/payments"
        accepted = await client.post(path, json={"amount": 7}, headers=payment)
        assert accepted.status_code == 202
    assert service.proc is not None
    assert await asyncio.to_thread(service.proc.wait, 15) == -9

    del service.env[FAILPOINTS]
    service.start(wait="/readyz")
    async with httpx.AsyncClient(base_url=service.url, timeout=10) as client:
        await eventually(lambda: _inbox_hits(client), timeout=20, message="the redelivery")
        assert (await order(client, placed["order_id"]))["paid"] == 7


async def _status_is(client: httpx.AsyncClient, order_id: str, status: str) -> bool:
    return (await order(client, order_id))["status"] == status


async def _inbox_hits(client: httpx.AsyncClient) -> bool:
    text = (await client.get("/metrics")).text
    return any(
        line.startswith("qosmesh_dedupe_hits_total")
        and 'side="inbox"' in line
        and float(line.rsplit(" ", 1)[1]) >= 1
        for line in text.splitlines()
    )
