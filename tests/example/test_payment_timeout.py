"""Orders left unpaid are cancelled by a delayed message (APP_EXAMPLE_PAYMENT_TIMEOUT), end to
end over HTTP on a real nats-server and PostgreSQL; a payment accepted first always wins."""

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from app.testing import eventually, running_app
from tests.example.conftest import Shop

ORDER = {"sku": "book-1", "quantity": 1}
TIMEOUT = 1.5


@pytest.fixture
async def shop(settings_for, nats_server, monkeypatch) -> AsyncIterator[Shop]:
    monkeypatch.setenv("APP_EXAMPLE_PAYMENT_TIMEOUT", str(TIMEOUT))
    settings = settings_for(nats_url=nats_server.url, ack_wait=2)
    async with (
        running_app(settings) as (app, url),
        httpx.AsyncClient(base_url=url, timeout=10) as client,
    ):
        yield Shop(app, client)


async def order(shop: Shop, order_id: str) -> dict[str, object]:
    response = await shop.client.get(f"/orders/{order_id}")
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


async def pay(shop: Shop, order_id: str, key: str, amount: int = 500) -> httpx.Response:
    return await shop.client.post(
        f"/orders/{order_id}/payments", json={"amount": amount}, headers={"Idempotency-Key": key}
    )


@pytest.mark.slow
async def test_an_order_left_unpaid_is_cancelled_and_refuses_payment_after(shop):
    placed = await shop.client.post("/orders", json=ORDER)
    order_id = placed.json()["order_id"]

    async def cancelled() -> bool:
        return (await order(shop, order_id))["status"] == "cancelled"

    await eventually(cancelled, timeout=TIMEOUT + 5)
    refused = await pay(shop, order_id, "late-payment")
    assert refused.status_code == 409
    assert "cancelled" in refused.text
    await asyncio.sleep(1)
    view = await order(shop, order_id)
    assert (view["status"], view["paid"], view["payments_accepted"]) == ("cancelled", 0, 0)


@pytest.mark.slow
async def test_a_payment_accepted_in_time_keeps_the_order(shop):
    placed = await shop.client.post("/orders", json=ORDER)
    order_id = placed.json()["order_id"]
    assert (await pay(shop, order_id, "on-time")).status_code == 202

    async def paid() -> bool:
        return (await order(shop, order_id))["paid"] == 500

    await eventually(paid, timeout=10)
    await asyncio.sleep(TIMEOUT + 1.5)  # the cancellation has fired by now, and did nothing
    view = await order(shop, order_id)
    assert (view["status"], view["paid"]) == ("confirmed", 500)
    assert (await pay(shop, order_id, "on-time")).status_code == 202  # the same key: replayed


async def test_a_bad_timeout_stops_the_start_naming_the_variable(settings_for, monkeypatch):
    from app.errors import ConfigurationError
    from app.example.settings import load

    monkeypatch.setenv("APP_EXAMPLE_PAYMENT_TIMEOUT", "-3")
    with pytest.raises(ConfigurationError, match="APP_EXAMPLE_PAYMENT_TIMEOUT"):
        load()


def test_a_timeout_longer_than_the_scheduler_keeps_stops_the_start_naming_the_variable(
    service_process, nats_server, postgres_server
):
    """On the server's schedules a PaymentDue can wait at most the stream's max age less an
    hour: 700,000 s (8 days) would make every order's PaymentDue a row the relay can never
    send. The instance refuses to start, with one line naming the setting and the limit."""
    env = {
        "APP_NATS_URL": nats_server.url,
        "APP_DATABASE_URL": postgres_server.url,
        "APP_SCHEDULER": "native",
        "APP_EXAMPLE_PAYMENT_TIMEOUT": "700000",
    }
    service = service_process(env, wait=None)
    assert service.proc is not None
    assert service.proc.wait(30) != 0
    log = service.log()
    (line,) = [line for line in log.splitlines() if "APP_EXAMPLE_PAYMENT_TIMEOUT" in line]
    assert "cannot start: APP_EXAMPLE_PAYMENT_TIMEOUT=700000 is longer than the 601200 s" in line
    assert "Traceback" not in log


async def test_orders_go_on_with_the_longest_timeout_the_scheduler_keeps(
    settings_for, nats_server, monkeypatch
):
    """At the limit itself the instance starts, and orders are confirmed: their PaymentDue
    rows are relayed, not refused."""
    monkeypatch.setenv("APP_EXAMPLE_PAYMENT_TIMEOUT", "601200")
    settings = settings_for(nats_url=nats_server.url, scheduler="native", ack_wait=2)
    async with (
        running_app(settings) as (app, url),
        httpx.AsyncClient(base_url=url, timeout=10) as client,
    ):
        shop = Shop(app, client)
        ids = []
        for _ in range(5):
            response = await client.post("/orders", json=ORDER)
            assert response.status_code == 202, response.text
            ids.append(response.json()["order_id"])

        async def confirmed() -> bool:
            statuses = [(await order(shop, i))["status"] for i in ids]
            return statuses == ["confirmed"] * len(ids)

        await eventually(confirmed, timeout=15, message="every order confirmed")
