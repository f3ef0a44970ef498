"""What a command leaves behind when the network between it and the broker fails: accepted
into the outbox, its event stored once when the network is back."""

import asyncio

import httpx
import nats
import pytest

from app.instance.services import services_of
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


async def confirmed(client: httpx.AsyncClient, order_id: str) -> bool:
    return bool((await client.get(f"/orders/{order_id}")).json()["status"] == "confirmed")


async def test_a_command_under_a_silent_then_cut_link_is_accepted_and_its_event_stored_once(
    shop, nats_proxy, nats_server
):
    """The link goes silent under the relay's publish, then the broker is gone for 6 s: the
    command was answered 202 from the database alone, and once the link is back its event is
    stored once and the order confirmed."""
    app, client = shop
    accepted = await client.post("/orders", json=ORDER)
    assert accepted.status_code == 202
    await eventually(lambda: confirmed(client, accepted.json()["order_id"]))
    before = await stored_events(nats_server)

    nats_proxy.silence()
    response = await client.post("/orders", json=ORDER)
    assert response.status_code == 202, response.text
    await asyncio.sleep(0.3)  # the relay's first attempt is on the wire, into the void
    nats_proxy.silence(False)
    nats_proxy.cut(refuse_for=6)

    await eventually(
        lambda: services_of(app).brokers.nc.is_connected, timeout=15, message="reconnected"
    )
    order_id = response.json()["order_id"]
    await eventually(lambda: confirmed(client, order_id), timeout=20)
    await asyncio.sleep(2)  # a second copy would be stored by now
    assert await stored_events(nats_server) == before + 1


async def test_lost_acks_make_the_relay_publish_again_and_the_broker_keeps_one_copy(
    shop, nats_proxy, nats_server
):
    """Replies lost one way: the event is stored but its PubAck never comes back. The relay
    publishes it again under the same Nats-Msg-Id once replies flow: one copy stored, the order
    confirmed once."""
    _, client = shop
    before = await stored_events(nats_server)
    nats_proxy.swallow_down = True
    response = await client.post("/orders", json=ORDER)
    assert response.status_code == 202, response.text
    await eventually(
        lambda: _stored_more(nats_server, before), timeout=15, message="the event stored"
    )
    await asyncio.sleep(1.5)  # attempts whose acks are lost
    nats_proxy.swallow_down = False
    nats_proxy.cut(refuse_for=0)  # what was lost left the stream torn: TCP gives up too
    await eventually(lambda: confirmed(client, response.json()["order_id"]), timeout=20)
    await asyncio.sleep(2)
    assert await stored_events(nats_server) == before + 1


async def _stored_more(nats_server, before: int) -> bool:
    return await stored_events(nats_server) > before
