"""A caller in the test process (its own discovery node, service `caller`, on the real bucket)
and instances of the service (`qosmesh`) as real `python -m app` processes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import pytest

from app.brokers import open_brokers
from app.brokers.embedded import NatsServer, free_port
from app.discovery import KvDiscovery, open_discovery
from app.settings import Settings
from app.testing import ServiceProcess, eventually
from app.transports.registry import needs_redis

TTL = 2.0
SERVICE = "qosmesh"


class CountingTransport(httpx.AsyncBaseTransport):
    """The real HTTP transport, recording the address of every attempt it is handed."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.attempts: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.attempts.append(f"{request.url.scheme}://{request.url.netloc.decode()}")
        return await self.inner.handle_async_request(request)

    def count(self, address: str) -> int:
        return self.attempts.count(address)

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.fixture
async def caller(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[KvDiscovery]:
    """The discovery view of another service that calls `qosmesh` by name."""
    settings = Settings.model_validate(
        {
            "service_name": "caller",
            "nats_url": nats_server.url,
            "node_ttl": TTL,
            "data_dir": tmp_path / "caller",
            "port": free_port(),
        }
    )
    async with AsyncExitStack() as stack:
        brokers = await stack.enter_async_context(
            open_brokers(settings, redis=needs_redis(settings))
        )
        yield await stack.enter_async_context(open_discovery(brokers, settings))


@pytest.fixture
def start_instances(service_process, nats_server: NatsServer, caller: KvDiscovery):
    """`await start_instances(n)`: n service processes started at once, ready, and all of them
    in the caller's view."""

    async def start(count: int) -> list[ServiceProcess]:
        env = {"APP_NATS_URL": nats_server.url, "APP_NODE_TTL": str(int(TTL))}
        services = [service_process(env, wait=None) for _ in range(count)]
        for service in services:
            await asyncio.to_thread(service.wait_for, "/readyz")
        addresses = {service.url for service in services}
        await eventually(
            lambda: {node.address for node in caller.nodes(SERVICE)} == addresses,
            message="every instance in the caller's view",
        )
        return services

    return start


def node_id_of(caller: KvDiscovery, service: ServiceProcess) -> str:
    return next(node.node_id for node in caller.nodes(SERVICE) if node.address == service.url)
