"""The framework runs without the example domain (a generated service may leave it out)."""

import httpx

import app.main
from app.testing import running_app


async def test_service_starts_and_is_ready_without_the_example(settings_for, nats_server):
    settings = settings_for(nats_url=nats_server.url, domain="")
    service = app.main.create_app(settings)
    async with (
        running_app(settings, service) as (_, url),
        httpx.AsyncClient(base_url=url) as client,
    ):
        assert (await client.get("/readyz")).status_code == 200
        order = await client.post("/orders", json={"sku": "a", "quantity": 1})
        assert order.status_code == 404
        assert "/orders" not in (await client.get("/openapi.json")).json()["paths"]
