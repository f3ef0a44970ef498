"""Peer calls from this process to three real `python -m app` instances on a real nats-server:
balancing, failover after a SIGKILL, and `GET /cluster/health`."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from typing import Any

import httpx
import pytest

from app.peers import NODE_EXTENSION, NoInstanceError, PeerClient
from app.testing import eventually
from app.testing.faults import freeze, thaw
from tests.peers.conftest import SERVICE, TTL, CountingTransport, node_id_of

pytestmark = pytest.mark.slow


async def test_thirty_calls_are_spread_evenly_over_three_instances(caller, start_instances):
    services = await start_instances(3)
    async with PeerClient(caller) as peers:
        served = []
        for _ in range(30):
            response = await peers.get(f"http://{SERVICE}/nodes")
            assert response.status_code == 200
            served.append(response.json()["self"])
            assert response.extensions[NODE_EXTENSION] == served[-1]
    assert Counter(served) == {node_id_of(caller, service): 10 for service in services}


async def test_calls_fail_over_a_killed_instance_and_never_try_it_once_it_left_the_view(
    caller, start_instances
):
    services = await start_instances(3)
    victim = services[0]
    victim_id = node_id_of(caller, victim)
    counting = CountingTransport()
    async with PeerClient(caller, transport=counting) as peers:

        async def call() -> str:
            response = await peers.get(f"http://{SERVICE}/nodes", timeout=2)
            assert response.status_code == 200
            return str(response.json()["self"])

        assert victim_id in {await call() for _ in range(3)}
        victim.kill()
        served_while_known: list[str] = []
        while caller.get(victim_id) is not None:
            served_while_known.append(await call())
            await asyncio.sleep(0.02)
        tried_while_known = counting.count(victim.url)
        served_after = [await call() for _ in range(30)]

    print(
        f"\n{len(served_while_known)} calls while the killed instance was still in the view, "
        f"{tried_while_known - 1} connection attempts to it (cool-down 2 s)"
    )
    assert victim_id not in served_while_known + served_after
    assert tried_while_known >= 2, "the killed instance was never tried: no failover happened"
    assert counting.count(victim.url) == tried_while_known
    assert set(served_after) == {node_id_of(caller, service) for service in services[1:]}


async def test_a_service_with_no_instance_fails_at_once_with_a_clear_error(caller):
    async with PeerClient(caller) as peers:
        started = time.perf_counter()
        with pytest.raises(NoInstanceError, match="no live instance of service '2nd-service'"):
            await peers.get("http://2nd-service/invoices/1")
        took = time.perf_counter() - started
    assert took < 0.1, f"took {took:.3f}s"


async def cluster_health(service, timeout: float | None = None) -> dict[str, Any]:
    params = {"timeout": timeout} if timeout else {}
    async with httpx.AsyncClient(base_url=service.url, timeout=10) as client:
        response = await client.get("/cluster/health", params=params)
    assert response.status_code == 200
    return dict(response.json())


def by_id(health: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {instance["node_id"]: instance for instance in health["instances"]}


async def test_cluster_health_lists_every_instance_and_marks_stopped_ones(caller, start_instances):
    first, paused, victim = await start_instances(3)
    ids = {s: node_id_of(caller, s) for s in (first, paused, victim)}

    health = await cluster_health(first)
    assert health["self"] == ids[first]
    assert set(by_id(health)) == set(ids.values())
    for instance in health["instances"]:
        assert instance["ready"] is True
        assert instance["error"] is None
        assert 0 < instance["rtt_ms"] < 1000

    freeze(paused.pid)
    try:
        started = time.monotonic()
        health = await cluster_health(first, timeout=0.5)
        took = time.monotonic() - started
    finally:
        thaw(paused.pid)
    stalled = by_id(health)[ids[paused]]
    assert stalled == {
        "node_id": ids[paused],
        "address": paused.url,
        "ready": False,
        "rtt_ms": None,
        "error": "no answer within 0.5s",
    }
    assert took < 1.5, f"the fan-out waited {took:.2f}s for a 0.5 s timeout"
    await eventually(lambda: caller.get(ids[paused]) is not None)

    victim.kill()
    health = await cluster_health(first)
    print("\nGET /cluster/health, one instance just killed:\n" + json.dumps(health, indent=2))
    dead = by_id(health)[ids[victim]]
    assert dead["ready"] is False
    assert dead["rtt_ms"] is None
    assert dead["error"].startswith("ConnectError")
    assert all(by_id(health)[ids[s]]["ready"] for s in (first, paused))

    async def victim_dropped() -> bool:
        return ids[victim] not in by_id(await cluster_health(first))

    took = await eventually(victim_dropped, timeout=TTL + 1, interval=0.1)
    print(f"killed instance gone from /cluster/health after {took:.2f}s (TTL {TTL:g}s)")
