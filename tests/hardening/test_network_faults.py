"""What a command answered 503 leaves behind when the network, not the broker, fails."""

import asyncio

import httpx
import nats
import pytest

from app.services import services_of
from app.testing import eventually, running_app

ORDER = {"sku": "book-1", "quantity": 1}
STREAM = "QOSMESH_ORDER_PLACED"


@pytest.fixture
async def shop(settings_for, nats_proxy):
    settings = settings_for(
        nats_url=nats_proxy.url, publish_attempt_timeout=0.5, publish_deadline=3, ack_wait=2
    )
    async with (
        running_app(settings) as (app, url),
        httpx.AsyncClient(base_url=url, timeout=30) as client,
    ):
        yield app, client


async def stored_events(nats_server) -> int:
    nc = await nats.connect(nats_server.url)
    try:
        return int((await nc.jetstream().stream_info(STREAM)).state.messages)
    finally:
        await nc.close()


async def order_records(nats_server) -> dict[str, str]:
    """Every record of the orders bucket, tombstones included: order id -> status."""
    nc = await nats.connect(nats_server.url)
    try:
        kv = await nc.jetstream().key_value("qosmesh_orders")
        records = {}
        for key in await kv.keys():
            entry = await kv.get(key)
            records[key] = (entry.value or b"").decode()
        return {key: value.split('"status":"')[1].split('"')[0] for key, value in records.items()}
    finally:
        await nc.close()


async def test_an_order_refused_while_the_broker_is_away_never_appears(
    shop, nats_proxy, nats_server
):
    """The link goes silent under a publish, then the broker is gone for 6 s: the command gets
    503, and no attempt waits in the client's buffer to land after the reconnect."""
    app, client = shop
    accepted = await client.post("/orders", json=ORDER)
    assert accepted.status_code == 202
    before = await stored_events(nats_server)

    nats_proxy.silence()
    answer = asyncio.create_task(client.post("/orders", json=ORDER))
    await asyncio.sleep(0.3)  # the first attempt is on the wire, into the void
    nats_proxy.silence(False)
    nats_proxy.cut(refuse_for=6)
    response = await answer
    assert response.status_code == 503, response.text

    await eventually(
        lambda: services_of(app).brokers.nc.is_connected, timeout=15, message="reconnected"
    )
    await asyncio.sleep(2)  # what was buffered would be flushed and handled by now
    assert await stored_events(nats_server) == before
    records = await order_records(nats_server)
    live = [status for status in records.values() if status != "withdrawn"]
    assert live == ["confirmed"], records  # the first order; the refused one left none


async def test_an_order_whose_acks_were_lost_is_not_brought_back_by_its_event(
    shop, nats_proxy, nats_server
):
    """Replies lost one way: the event is stored but the command gets 503 (indeterminate, as
    for any lost reply). The order the client was refused must not appear when the event is
    handled later."""
    _, client = shop
    before = await stored_events(nats_server)
    nats_proxy.swallow_down = True
    response = await client.post("/orders", json=ORDER)
    assert response.status_code == 503, response.text
    nats_proxy.swallow_down = False
    await eventually(
        lambda: _stored_more(nats_server, before), timeout=15, message="the event stored"
    )
    await asyncio.sleep(3)  # past the ack wait: the event has been handled by now
    records = await order_records(nats_server)
    assert list(records.values()) == ["withdrawn"], records
    (order_id,) = records
    assert (await client.get(f"/orders/{order_id}")).status_code == 404


async def _stored_more(nats_server, before: int) -> bool:
    return await stored_events(nats_server) > before
