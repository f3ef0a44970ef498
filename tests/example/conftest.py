from collections.abc import AsyncIterator

import httpx
import pytest

from app.instance.services import services_of
from app.testing import running_app


class Shop:
    def __init__(self, app, client: httpx.AsyncClient) -> None:
        self.app = app
        self.client = client

    @property
    def js(self):
        return services_of(self.app).brokers.js


@pytest.fixture
async def shop(settings_for, nats_server) -> AsyncIterator[Shop]:
    settings = settings_for(
        nats_url=nats_server.url,
        admin_token="admin-secret-0123456789",
        publish_attempt_timeout=0.3,
        publish_deadline=1.5,
        ack_wait=2,
    )
    async with (
        running_app(settings) as (app, url),
        httpx.AsyncClient(base_url=url, timeout=10) as client,
    ):
        yield Shop(app, client)
