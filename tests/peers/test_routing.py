"""Which instance a call goes to and when it goes to another: the balancing and failover rules,
on an in-memory discovery view and a stand-in network that fails on demand."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable

import httpx
import pytest

from app.discovery import MemoryDiscovery, MemoryRegistry, NodeInfo
from app.discovery.models import now
from app.peers import NODE_EXTENSION, CallBudget, NoInstanceError, PeerClient

Failure = Callable[[httpx.Request], Exception]


def node(node_id: str, service: str = "billing", **metadata: str) -> NodeInfo:
    return NodeInfo(
        node_id=node_id,
        service=service,
        version="1",
        address=f"http://{node_id}.test:8000",
        started_at=now(),
        last_seen=now(),
        metadata=metadata,
    )


class Network:
    """Answers every request with the host it reached, unless that host is told to fail."""

    def __init__(self) -> None:
        self.tried: list[str] = []
        self.failures: dict[str, Failure] = {}

    async def handle(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host.removesuffix(".test")
        self.tried.append(host)
        if host in self.failures:
            raise self.failures[host](request)
        return httpx.Response(200, json={"host": host, "path": request.url.raw_path.decode()})

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)


def refused(request: httpx.Request) -> Exception:
    return httpx.ConnectError("connection refused", request=request)


def read_timeout(request: httpx.Request) -> Exception:
    return httpx.ReadTimeout("timed out", request=request)


async def cluster(*nodes: NodeInfo, me: str = "a") -> MemoryDiscovery:
    registry = MemoryRegistry()
    for peer in nodes:
        registry.write(peer)
    return MemoryDiscovery(node(me, service="caller"), registry)


@pytest.fixture
def network() -> Network:
    return Network()


async def test_round_robin_takes_each_instance_in_turn(network):
    discovery = await cluster(node("b1"), node("b2"), node("b3"))
    async with PeerClient(discovery, transport=network.transport()) as peers:
        for _ in range(6):
            await peers.get("http://billing/x")
    assert network.tried == ["b1", "b2", "b3", "b1", "b2", "b3"]


async def test_random_reaches_every_instance(network):
    discovery = await cluster(node("b1"), node("b2"), node("b3"))
    async with PeerClient(discovery, balancing="random", transport=network.transport()) as peers:
        for _ in range(60):
            await peers.get("http://billing/x")
    assert set(Counter(network.tried)) == {"b1", "b2", "b3"}


async def test_prefer_local_picks_this_instance_while_it_serves_the_service(network):
    registry = MemoryRegistry()
    local = MemoryDiscovery(node("b2"), registry)
    await local.register()
    for peer in (node("b1"), node("b3")):
        registry.write(peer)
    async with PeerClient(local, balancing="prefer_local", transport=network.transport()) as p:
        for _ in range(3):
            await p.get("http://billing/x")
        network.failures["b2"] = refused
        await p.get("http://billing/x")
    assert network.tried[:4] == ["b2"] * 4
    assert network.tried[4] in {"b1", "b3"}


async def test_path_and_query_are_kept_and_the_answering_node_is_named(network):
    discovery = await cluster(node("b1"))
    async with PeerClient(discovery, transport=network.transport()) as peers:
        response = await peers.get("http://billing/invoices/1?full=yes")
    assert response.json() == {"host": "b1", "path": "/invoices/1?full=yes"}
    assert response.extensions[NODE_EXTENSION] == "b1"
    assert response.request.headers["host"] == "billing"


@pytest.mark.parametrize(
    "url", ["http://example.com/x", "http://127.0.0.1:8000/x", "http://localhost/x"]
)
async def test_hosts_that_are_not_service_names_pass_through(network, url):
    discovery = await cluster()
    async with PeerClient(discovery, transport=network.transport()) as peers:
        await peers.get(url)
    assert network.tried == [httpx.URL(url).host]


async def test_a_draining_instance_is_never_chosen(network):
    discovery = await cluster(node("b1", draining="true"), node("b2"))
    async with PeerClient(discovery, transport=network.transport()) as peers:
        for _ in range(4):
            await peers.get("http://billing/x")
    assert network.tried == ["b2"] * 4


async def test_only_draining_instances_means_no_instance(network):
    discovery = await cluster(node("b1", draining="true"))
    async with PeerClient(discovery, transport=network.transport()) as peers:
        with pytest.raises(NoInstanceError):
            await peers.get("http://billing/x")
    assert network.tried == []


async def test_a_refused_post_goes_to_another_instance(network):
    network.failures["b1"] = refused
    discovery = await cluster(node("b1"), node("b2"))
    async with PeerClient(discovery, transport=network.transport()) as peers:
        response = await peers.post("http://billing/x", json={"n": 1})
    assert response.json()["host"] == "b2"
    assert network.tried == ["b1", "b2"]


async def test_a_timed_out_post_is_not_retried(network):
    network.failures["b1"] = read_timeout
    discovery = await cluster(node("b1"), node("b2"))
    async with PeerClient(discovery, transport=network.transport()) as peers:
        with pytest.raises(httpx.ReadTimeout):
            await peers.post("http://billing/x", json={"n": 1})
    assert network.tried == ["b1"]


@pytest.mark.parametrize(
    ("method", "headers"),
    [("GET", {}), ("PUT", {}), ("DELETE", {}), ("POST", {"Idempotency-Key": "k1"})],
)
async def test_a_timed_out_idempotent_request_is_retried_elsewhere(network, method, headers):
    network.failures["b1"] = read_timeout
    discovery = await cluster(node("b1"), node("b2"))
    async with PeerClient(discovery, transport=network.transport()) as peers:
        response = await peers.request(method, "http://billing/x", headers=headers, content=b"1")
    assert response.json()["host"] == "b2"
    assert network.tried == ["b1", "b2"]


async def test_attempts_are_bounded_and_the_last_error_is_raised(network):
    discovery = await cluster(*(node(f"b{i}") for i in range(5)))
    for i in range(5):
        network.failures[f"b{i}"] = refused
    budget = CallBudget(attempts=3)
    async with PeerClient(discovery, transport=network.transport(), budget=budget) as peers:
        with pytest.raises(httpx.ConnectError):
            await peers.get("http://billing/x")
    assert len(network.tried) == 3


async def test_a_refusing_instance_is_skipped_while_it_cools_down(network):
    network.failures["b1"] = refused
    discovery = await cluster(node("b1"), node("b2"), node("b3"))
    async with PeerClient(discovery, transport=network.transport(), cooldown=0.2) as peers:
        for _ in range(6):
            await peers.get("http://billing/x")
        assert network.tried.count("b1") == 1
        del network.failures["b1"]
        await asyncio.sleep(0.25)
        hosts = [(await peers.get("http://billing/x")).json()["host"] for _ in range(3)]
    assert "b1" in hosts


async def test_every_instance_cooling_down_is_still_better_than_none(network):
    network.failures["b1"] = refused
    discovery = await cluster(node("b1"))
    async with PeerClient(discovery, transport=network.transport(), cooldown=60) as peers:
        for _ in range(2):
            with pytest.raises(httpx.ConnectError):
                await peers.get("http://billing/x")
    assert network.tried == ["b1", "b1"]


async def test_node_request_goes_to_that_node_only(network):
    network.failures["b1"] = refused
    discovery = await cluster(node("b1"), node("b2"))
    async with PeerClient(discovery, transport=network.transport()) as peers:
        with pytest.raises(httpx.ConnectError):
            await peers.node_request(node("b1"), "GET", "/readyz")
    assert network.tried == ["b1"]
