"""The example domain over HTTP on a real nats-server: orders (QoS 1) and payments (QoS 2)."""

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from app.example.messages import PaymentCaptured
from app.instance.services import services_of
from app.messages import encode
from app.testing import eventually

ORDER = {"sku": "book-1", "quantity": 2}


async def order_status(shop, order_id: str) -> str:
    response = await shop.client.get(f"/orders/{order_id}")
    assert response.status_code == 200, response.text
    return str(response.json()["status"])


async def stream_count(shop, stream: str) -> int:
    return int((await shop.js.stream_info(stream)).state.messages)


async def test_order_is_pending_at_once_then_confirmed(shop):
    accepted = await shop.client.post("/orders", json=ORDER)
    assert accepted.status_code == 202
    body = accepted.json()
    assert body["status"] == "pending"
    assert set(body) == {"order_id", "message_id", "status"}

    first = await shop.client.get(f"/orders/{body['order_id']}")
    assert first.status_code == 200
    assert first.json()["status"] in ("pending", "confirmed")
    await eventually(lambda: _is(shop, body["order_id"], "confirmed"))
    order = (await shop.client.get(f"/orders/{body['order_id']}")).json()
    assert order["sku"] == "book-1"
    assert order["quantity"] == 2
    assert order["paid"] == 0
    assert set(order) == {
        "order_id",
        "sku",
        "quantity",
        "status",
        "paid",
        "payments_accepted",
        "created_at",
        "updated_at",
    }


async def _is(shop, order_id: str, status: str) -> bool:
    return await order_status(shop, order_id) == status


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"sku": "", "quantity": 1}, "body.sku"),
        ({"sku": "x" * 65, "quantity": 1}, "body.sku"),
        ({"sku": "a", "quantity": 0}, "body.quantity"),
        ({"sku": "a", "quantity": 10001}, "body.quantity"),
        ({"sku": "a", "quantity": "many"}, "body.quantity"),
        ({"sku": "a"}, "body.quantity"),
        ({"sku": "a", "quantity": 1, "price": 3}, "body.price"),
        ({"sku": "a\u0000b", "quantity": 1}, "body.sku"),
        ({"sku": "a", "quantity": True}, "body.quantity"),
    ],
)
async def test_bad_order_is_422_naming_the_field(shop, body, field):
    response = await shop.client.post("/orders", json=body)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert field in [error["field"] for error in response.json()["errors"]]


async def test_malformed_json_is_422(shop):
    response = await shop.client.post(
        "/orders", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422


async def test_body_over_the_limit_is_413(shop):
    response = await shop.client.post("/orders", json={"sku": "a" * 70000, "quantity": 1})
    assert response.status_code == 413

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b"x" * 10000

    streamed = await shop.client.post(
        "/orders", content=chunks(), headers={"content-type": "application/json"}
    )
    assert streamed.status_code == 413


@pytest.mark.parametrize("order_id", ["01HZZZZZZZZZZZZZZZZZZZZZZZ", "not-an-id", "..", "a" * 300])
async def test_unknown_or_malformed_order_is_404(shop, order_id):
    response = await shop.client.get(f"/orders/{order_id}")
    assert response.status_code == 404


async def test_repeat_with_same_key_gets_the_first_answer_and_publishes_nothing(shop):
    headers = {"Idempotency-Key": "order-abc"}
    first = await shop.client.post("/orders", json=ORDER, headers=headers)
    await eventually(lambda: _is(shop, first.json()["order_id"], "confirmed"))
    count = await stream_count(shop, "QOSMESH_ORDER_PLACED")
    again = await shop.client.post("/orders", json=ORDER, headers=headers)
    assert again.status_code == first.status_code == 202
    assert again.json() == first.json()
    await asyncio.sleep(0.5)  # what the relay would have published by now
    assert await stream_count(shop, "QOSMESH_ORDER_PLACED") == count == 1

    conflict = await shop.client.post("/orders", json={**ORDER, "quantity": 3}, headers=headers)
    assert conflict.status_code == 409
    assert conflict.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize("key", ["with spaces", "caf\u00e9", ".leading", "a*b>c", "x" * 250])
async def test_keys_that_are_not_kv_tokens_still_work(shop, key):
    headers = [(b"Idempotency-Key", key.encode("latin-1"))]
    first = await shop.client.post("/orders", json=ORDER, headers=headers)
    again = await shop.client.post("/orders", json=ORDER, headers=headers)
    assert first.status_code == 202
    assert again.json() == first.json()


async def test_payment_needs_an_idempotency_key_and_a_known_order(shop):
    order_id = (await shop.client.post("/orders", json=ORDER)).json()["order_id"]
    missing = await shop.client.post(f"/orders/{order_id}/payments", json={"amount": 5})
    assert missing.status_code == 422
    assert "header.Idempotency-Key" in missing.json()["detail"]
    unknown = await shop.client.post(
        "/orders/01HZZZZZZZZZZZZZZZZZZZZZZZ/payments",
        json={"amount": 5},
        headers={"Idempotency-Key": "p"},
    )
    assert unknown.status_code == 404
    for amount in (0, -1, "ten"):
        bad = await shop.client.post(
            f"/orders/{order_id}/payments",
            json={"amount": amount},
            headers={"Idempotency-Key": "p"},
        )
        assert bad.status_code == 422
        assert bad.json()["errors"][0]["field"] == "body.amount"


async def test_each_payment_is_applied_exactly_once(shop):
    """Repeated requests, a republish under a fresh Nats-Msg-Id (as after the broker's dedupe
    window), and a new message for the same payment: the amount is added once per key."""
    order_id = (await shop.client.post("/orders", json=ORDER)).json()["order_id"]
    url = f"/orders/{order_id}/payments"
    answers = await asyncio.gather(
        *(
            shop.client.post(url, json={"amount": 7}, headers={"Idempotency-Key": "pay-1"})
            for _ in range(5)
        )
    )
    assert {a.status_code for a in answers} == {202}
    assert len({a.json()["message_id"] for a in answers}) == 1
    second = await shop.client.post(url, json={"amount": 5}, headers={"Idempotency-Key": "pay-2"})
    assert second.json() == {
        "order_id": order_id,
        "payment_id": "pay-2",
        "message_id": second.json()["message_id"],
        "status": "accepted",
    }
    await eventually(lambda: _paid(shop, order_id, 12))

    first = answers[0].json()
    same = PaymentCaptured(
        message_id=first["message_id"], order_id=order_id, payment_id="pay-1", amount=7
    )
    envelope = encode(same, same.qos, "qosmesh.payment_captured")
    await shop.js.publish(
        envelope.subject, envelope.body, headers={**envelope.headers, "Nats-Msg-Id": "late"}
    )
    other_message = PaymentCaptured(order_id=order_id, payment_id="pay-1", amount=7)
    envelope = encode(other_message, other_message.qos, "qosmesh.payment_captured")
    await shop.js.publish(envelope.subject, envelope.body, headers=envelope.headers)
    await asyncio.sleep(1.0)
    assert await _paid(shop, order_id, 12)


async def _paid(shop, order_id: str, amount: int) -> bool:
    return bool((await shop.client.get(f"/orders/{order_id}")).json()["paid"] == amount)


async def test_broker_down_accepts_commands_into_the_outbox_and_confirms_them_later(
    shop, nats_server
):
    """NATS away, the database up: commands answer 202 at once (safe in the outbox), readiness
    stays 200 reporting NATS, and the orders are confirmed once NATS is back."""
    nats_server.kill()
    await eventually(lambda: not services_of(shop.app).brokers.nc.is_connected)
    started = time.monotonic()
    accepted = [await shop.client.post("/orders", json=ORDER) for _ in range(5)]
    assert [response.status_code for response in accepted] == [202] * 5
    assert time.monotonic() - started < 2.0
    ready = await shop.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"]["nats"] == "disconnected"
    assert ready.json()["checks"]["database"] == "ok"
    order_id = accepted[0].json()["order_id"]
    assert await order_status(shop, order_id) == "pending"
    nats_server.start()
    for response in accepted:
        await eventually(lambda r=response: _is(shop, r.json()["order_id"], "confirmed"), 30)


async def test_a_stream_refusing_writes_holds_the_event_until_it_accepts_them(shop):
    """The stream refuses writes: the command is accepted all the same (its event waits in the
    outbox), and once the stream takes writes again the order is confirmed, once."""
    js = shop.js
    await shop.client.post("/orders", json=ORDER)  # the stream exists from here on
    await eventually(lambda: _stored(shop), message="the first event stored")
    info = await js.stream_info("QOSMESH_ORDER_PLACED")
    full = info.config
    full.max_msg_size = 16  # every event is larger: refused (discard-new is not allowed with
    await js.update_stream(full)  # message schedules)

    accepted = await shop.client.post("/orders", json=ORDER, headers={"Idempotency-Key": "k1"})
    assert accepted.status_code == 202
    order_id = accepted.json()["order_id"]
    await asyncio.sleep(1.0)
    assert await order_status(shop, order_id) == "pending"

    full.max_msg_size = -1
    await js.update_stream(full)
    await eventually(lambda: _is(shop, order_id, "confirmed"), 30)
    assert await stream_count(shop, "QOSMESH_ORDER_PLACED") == info.state.messages + 1


async def _stored(shop) -> bool:
    return await stream_count(shop, "QOSMESH_ORDER_PLACED") > 0
