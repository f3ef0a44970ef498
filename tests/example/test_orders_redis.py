"""The example domain, unchanged, with QoS 1 and 2 on Redis Streams (its orders stay in
PostgreSQL): orders confirmed, payments applied once, dead letters served by /admin/dlq."""

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import httpx
import pytest

from app.example.messages import PaymentCaptured
from app.instance.services import services_of
from app.messages import encode
from app.testing import eventually, running_app
from tests.example.test_orders import ORDER, _is, _paid

ADMIN = {"Authorization": "Bearer admin-secret-0123456789"}


class RedisShop:
    def __init__(self, app, client: httpx.AsyncClient) -> None:
        self.app = app
        self.client = client

    @property
    def redis(self):
        return services_of(self.app).brokers.redis


@pytest.fixture
async def shop(settings_for, nats_server, redis_server) -> AsyncIterator[RedisShop]:
    settings = settings_for(
        nats_url=nats_server.url,
        redis_url=redis_server.url,
        qos1_transport="redis",
        qos2_transport="redis",
        admin_token="admin-secret-0123456789",
        publish_attempt_timeout=0.3,
        publish_deadline=1.5,
        redis_claim_idle=1.0,
        max_deliver=3,
        redis_block_ms=200,
    )
    async with (
        running_app(settings) as (app, url),
        httpx.AsyncClient(base_url=url, timeout=10) as client,
    ):
        yield RedisShop(app, client)


def fields(message) -> dict[Any, Any]:
    envelope = encode(message, message.qos, "qosmesh.payment_captured")
    return {**envelope.headers, "$body": envelope.body}


async def test_order_placed_over_http_is_confirmed_through_redis(shop):
    accepted = await shop.client.post("/orders", json=ORDER)
    assert accepted.status_code == 202
    order_id = accepted.json()["order_id"]
    await eventually(lambda: _is(shop, order_id, "confirmed"))
    assert await shop.redis.xlen("qosmesh.order_placed") == 1
    assert (await shop.redis.xpending("qosmesh.order_placed", "qosmesh"))["pending"] == 0


async def test_each_payment_is_applied_exactly_once_on_redis(shop):
    """Repeated requests, the same message re-added past the publisher's dedupe, and a new
    message for the same payment: the amount is added once per payment."""
    order_id = (await shop.client.post("/orders", json=ORDER)).json()["order_id"]
    await eventually(lambda: _is(shop, order_id, "confirmed"))
    url = f"/orders/{order_id}/payments"
    answers = await asyncio.gather(
        *(
            shop.client.post(url, json={"amount": 7}, headers={"Idempotency-Key": "pay-1"})
            for _ in range(5)
        )
    )
    assert {a.status_code for a in answers} == {202}
    second = await shop.client.post(url, json={"amount": 5}, headers={"Idempotency-Key": "pay-2"})
    assert second.status_code == 202
    await eventually(lambda: _paid(shop, order_id, 12))

    first = answers[0].json()
    same = PaymentCaptured(
        message_id=first["message_id"], order_id=order_id, payment_id="pay-1", amount=7
    )
    await shop.redis.xadd("qosmesh.payment_captured", fields(same))
    other = PaymentCaptured(order_id=order_id, payment_id="pay-1", amount=7)
    await shop.redis.xadd("qosmesh.payment_captured", fields(other))
    await eventually(lambda: _settled(shop, "qosmesh.payment_captured"))
    await asyncio.sleep(0.3)
    assert await _paid(shop, order_id, 12)


async def _settled(shop, stream: str) -> bool:
    return int((await shop.redis.xpending(stream, "qosmesh"))["pending"]) == 0


async def test_redis_dead_letters_are_listed_shown_and_replayed_by_the_admin_api(shop):
    """A payment for an order that does not exist fails until it is dead-lettered; a replay
    sends the same message id through the handler again (which dead-letters it again)."""
    early = PaymentCaptured(order_id="01J0000000000000000000000Z", payment_id="p", amount=3)
    await shop.redis.xadd("qosmesh.payment_captured", fields(early))

    async def dead() -> list[Any]:
        listing = await shop.client.get("/admin/dlq", headers=ADMIN)
        assert listing.status_code == 200, listing.text
        return [i for i in listing.json()["items"] if i["message_id"] == early.message_id]

    await eventually(lambda: _any(dead()), timeout=15)
    (item,) = await dead()
    assert item["dlq_id"].startswith("rd-")
    assert item["transport"] == "redis"
    assert item["deliveries"] == 3
    assert "not recorded yet" in item["error"]
    shown = await shop.client.get(f"/admin/dlq/{item['dlq_id']}", headers=ADMIN)
    assert shown.json()["headers"]["qm-id"] == early.message_id

    replay = await shop.client.post(f"/admin/dlq/{item['dlq_id']}/replay", headers=ADMIN)
    assert replay.status_code == 202
    assert (await shop.client.get(f"/admin/dlq/{item['dlq_id']}", headers=ADMIN)).status_code == 404
    await eventually(lambda: _any(dead()), timeout=15)
    (again,) = await dead()
    assert again["dlq_id"] != item["dlq_id"]
    assert again["deliveries"] == 3


async def _any(items: Awaitable[list[Any]]) -> bool:
    return bool(await items)
