"""The framework runs without the example domain (a generated service may leave it out)."""

import httpx
import pytest

import app.main
from app.errors import ConfigurationError
from app.main import create_app
from app.settings import Settings
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


def test_a_domain_route_that_would_hide_a_built_in_one_is_refused_at_start():
    """The domain's routes are matched first (they carry the traffic), so one on a built-in's
    path and method would take its place: refused, naming it."""
    settings = Settings(domain="tests.foundation.shadowing_domain")
    with pytest.raises(ConfigurationError, match="GET /healthz would hide"):
        create_app(settings)
