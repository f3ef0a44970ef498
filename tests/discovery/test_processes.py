"""Several `python -m app` processes on one real nats-server: joins, stops, crashes, restarts."""

from __future__ import annotations

import asyncio
import signal
import time

import httpx
import nats
import pytest
from nats.js.api import KeyValueConfig, StorageType

from app.testing import NatsServer, ServiceProcess, eventually
from app.testing.faults import FAKETIME
from tests.discovery.conftest import TTL, node_id, status, view

pytestmark = pytest.mark.slow


async def start_ready(service_process, nats_server: NatsServer, count: int, client):
    """Start `count` instances at once; return them and when the last one turned ready."""
    env = {"APP_NATS_URL": nats_server.url, "APP_NODE_TTL": str(TTL)}
    services = [service_process(env, wait=None) for _ in range(count)]
    ready_at: dict[int, float] = {}

    async def all_ready() -> bool:
        for index, service in enumerate(services):
            if index not in ready_at and await status(client, service.url + "/readyz") == 200:
                ready_at[index] = time.monotonic()
        return len(ready_at) == count

    await eventually(all_ready, timeout=30, interval=0.02, message="every instance ready")
    return services, max(ready_at.values())


def stop_all(services: list[ServiceProcess]) -> None:
    """SIGTERM every instance at once, so their shutdowns overlap before the fixture waits."""
    for service in services:
        service.send_signal(signal.SIGTERM)


async def all_ready(client: httpx.AsyncClient, services: list[ServiceProcess]) -> bool:
    return all([await status(client, service.url + "/readyz") == 200 for service in services])


async def views_are(client, services: list[ServiceProcess], expected: set[str]) -> bool:
    return all([await view(client, service) == expected for service in services])


async def test_three_instances_see_each_other_within_a_second_of_ready(
    service_process, nats_server
):
    async with httpx.AsyncClient() as client:
        services, last_ready = await start_ready(service_process, nats_server, 3, client)
        ids = {await node_id(client, service) for service in services}
        await eventually(lambda: views_are(client, services, ids), timeout=1, interval=0.02)
        print(f"\nall views complete {time.monotonic() - last_ready:.3f}s after the last ready")
        stop_all(services)


async def test_graceful_stop_is_seen_by_the_others_within_a_second(service_process, nats_server):
    async with httpx.AsyncClient() as client:
        services, _ = await start_ready(service_process, nats_server, 3, client)
        ids = {await node_id(client, service) for service in services}
        await eventually(lambda: views_are(client, services, ids), timeout=1)
        leaving, staying = services[0], services[1:]
        gone = ids - {await node_id(client, leaving)}
        leaving.send_signal(signal.SIGTERM)
        took = await eventually(lambda: views_are(client, staying, gone), timeout=1, interval=0.01)
        print(f"\ngraceful leave seen by the others after {took:.3f}s")
        assert "deregistered" in leaving.log()
        stop_all(staying)


async def test_killed_instance_is_dropped_within_ttl_plus_one_second(service_process, nats_server):
    async with httpx.AsyncClient() as client:
        services, _ = await start_ready(service_process, nats_server, 3, client)
        ids = {await node_id(client, service) for service in services}
        await eventually(lambda: views_are(client, services, ids), timeout=1)
        victim, staying = services[0], services[1:]
        gone = ids - {await node_id(client, victim)}
        victim.kill()
        took = await eventually(
            lambda: views_are(client, staying, gone), timeout=TTL + 1, interval=0.02
        )
        print(f"\ncrash leave seen by the others after {took:.3f}s (TTL {TTL}s)")
        stop_all(staying)


async def test_nats_restart_leaves_every_view_whole_and_the_bucket_full(
    service_process, nats_server
):
    async with httpx.AsyncClient() as client:
        services, _ = await start_ready(service_process, nats_server, 3, client)
        ids = {await node_id(client, service) for service in services}
        await eventually(lambda: views_are(client, services, ids), timeout=1)
        nats_server.restart()
        took = await eventually(lambda: all_ready(client, services), timeout=5)
        print(f"\nevery instance ready again {took:.3f}s after the restart")
        await asyncio.sleep(TTL)  # long enough for any wrong expiry to have shown
        assert await views_are(client, services, ids)

        nc = await nats.connect(nats_server.url)
        try:
            keys = await (await nc.jetstream().key_value("qosmesh_nodes")).keys()
        finally:
            await nc.close()
        assert {key.split(".", 1)[1] for key in keys} == ids
        stop_all(services)


@pytest.mark.skipif(FAKETIME is None, reason="needs Debian's faketime (.ci/run installs it)")
async def test_a_host_whose_clock_runs_ahead_drops_nobody_in_sweep_mode(
    service_process, nats_server
):
    """Sweep mode (no limit markers): one instance's clock runs 30 s ahead, more than the
    TTL. Ages come from the server's timestamps, so it sees the other instance as alive all
    along instead of expiring it at once and seeing it join again on its next heartbeat."""
    nc = await nats.connect(nats_server.url)
    await nc.jetstream().create_key_value(
        config=KeyValueConfig(bucket="qosmesh_nodes", ttl=TTL, storage=StorageType.FILE)
    )
    await nc.close()
    env = {"APP_NATS_URL": nats_server.url, "APP_NODE_TTL": str(TTL)}
    # Rare heartbeats: the skewed instance sweeps several times between two of them.
    steady = service_process({**env, "APP_HEARTBEAT_INTERVAL": str(TTL * 0.9)}, wait="/readyz")
    ahead = service_process(
        {**env, "LD_PRELOAD": str(FAKETIME), "FAKETIME": "+30s"},
        wait="/readyz",
    )
    async with httpx.AsyncClient() as client:
        other = await node_id(client, steady)
        await eventually(lambda: _sees(client, ahead, other), timeout=5, message="steady seen")
        for _ in range(int(TTL * 3 / 0.2)):  # three TTLs
            assert other in await view(client, ahead), "the skewed instance dropped its peer"
            await asyncio.sleep(0.2)
    assert "node left" not in ahead.log(400)


async def _sees(client: httpx.AsyncClient, service: ServiceProcess, other: str) -> bool:
    return other in await view(client, service)
