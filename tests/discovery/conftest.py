"""In-process discovery nodes on a real nats-server, and a recorder of the events they see."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.brokers import Brokers, open_brokers
from app.brokers.embedded import NatsServer, free_port
from app.discovery import KvDiscovery, NodeEvent, open_discovery
from app.settings import Settings
from app.testing import ServiceProcess
from app.transports.registry import needs_redis

TTL = 2.0
OTHER_SERVICE = "2nd-service"
"""Another service's name; a leading digit keeps it from matching a generated service's slug."""


@dataclass
class Node:
    brokers: Brokers
    discovery: KvDiscovery
    settings: Settings

    @property
    def node_id(self) -> str:
        return self.discovery.self_info.node_id

    def sees(self, node_id: str) -> bool:
        return self.discovery.get(node_id) is not None

    async def crash(self) -> None:
        """Gone without a goodbye: the connection drops and nothing deletes the key."""
        await self.brokers.nc.close()


@dataclass
class Recorder:
    """Every event one node's subscription delivers, in order."""

    events: list[NodeEvent] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    """When each event arrived (time.monotonic())."""

    def kinds(self, node_id: str) -> list[str]:
        return [event.kind for event in self.events if event.node.node_id == node_id]

    def first(self, node_id: str, kind: str) -> float | None:
        """When the first `kind` event for `node_id` arrived."""
        for event, at in zip(self.events, self.times, strict=True):
            if event.node.node_id == node_id and event.kind == kind:
                return at
        return None

    def left(self, node_id: str) -> list[str | None]:
        return [e.reason for e in self.events if e.node.node_id == node_id and e.kind == "left"]


StartNode = Callable[..., Awaitable[Node]]


@pytest.fixture
async def start_node(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[StartNode]:
    """`await start_node(**settings_overrides, limit_markers=True)`: one more live node."""
    async with AsyncExitStack() as stack:

        async def start(limit_markers: bool = True, **overrides: Any) -> Node:
            values: dict[str, Any] = {
                "nats_url": nats_server.url,
                "node_ttl": TTL,
                "data_dir": tmp_path / "data",
                "port": free_port(),
                **overrides,
            }
            settings = Settings.model_validate(values)
            brokers = await stack.enter_async_context(
                open_brokers(settings, redis=needs_redis(settings))
            )
            discovery = await stack.enter_async_context(
                open_discovery(brokers, settings, limit_markers=limit_markers)
            )
            return Node(brokers, discovery, settings)

        yield start


@pytest.fixture
async def record() -> AsyncIterator[Callable[[Node], Recorder]]:
    """`record(node)` collects the events `node` sees from now on."""
    tasks: list[asyncio.Task[None]] = []

    def start(node: Node) -> Recorder:
        recorder = Recorder()
        subscription = node.discovery.subscribe()

        async def collect() -> None:
            async for event in subscription:
                recorder.times.append(time.monotonic())
                recorder.events.append(event)

        tasks.append(asyncio.create_task(collect()))
        return recorder

    yield start
    for task in tasks:
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.gather(*tasks)


# Reading instances over HTTP (shared with tests/cluster). The generous timeout lets a reply
# slowed by a leader election or a loaded machine still count.
HTTP_TIMEOUT = 2.0


async def status(client: httpx.AsyncClient, url: str) -> int:
    """The status `url` answers, or 0 when it does not answer."""
    try:
        return (await client.get(url, timeout=HTTP_TIMEOUT)).status_code
    except httpx.HTTPError:
        return 0


async def view(client: httpx.AsyncClient, service: ServiceProcess) -> set[str]:
    """The node ids in `service`'s discovery view."""
    body = (await client.get(service.url + "/nodes", timeout=HTTP_TIMEOUT)).json()
    return {node["node_id"] for node in body["nodes"]}


async def node_id(client: httpx.AsyncClient, service: ServiceProcess) -> str:
    return str((await client.get(service.url + "/nodes", timeout=HTTP_TIMEOUT)).json()["self"])
