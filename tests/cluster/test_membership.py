"""qosmesh on a 3-node JetStream cluster: everything replicated on every node, and instances
that find each other and see every leave, as on a single server."""

from __future__ import annotations

import signal

import httpx
import pytest

from app.testing import eventually
from tests.cluster.conftest import STREAMS, TTL, start_instances, views_are

pytestmark = pytest.mark.slow


async def test_every_stream_and_bucket_has_a_replica_on_each_node(
    nats_cluster, service_process, postgres_server
):
    """With APP_REPLICAS=3: discovery, orders and payments, dead letters, advisories, the
    idempotency store, the orders read model and the HTTP keys all live on all three nodes."""
    async with httpx.AsyncClient() as client:
        await start_instances(service_process, nats_cluster, 1, client, postgres_server)
    async with nats_cluster.client() as js:
        for stream in STREAMS:
            info = await js.stream_info(stream)
            assert info.config.num_replicas == 3, stream
            assert info.cluster is not None
            assert info.cluster.leader
            peers = {info.cluster.leader} | {p.name for p in info.cluster.replicas or []}
            assert peers == {"n0", "n1", "n2"}, stream


async def test_instances_see_each_other_and_every_leave(
    nats_cluster, service_process, postgres_server
):
    """A graceful stop is seen within a second, a SIGKILL within the TTL and a second."""
    async with httpx.AsyncClient() as client:
        services, ids = await start_instances(
            service_process, nats_cluster, 4, client, postgres_server
        )
        leaving, crashing, *staying = services

        leaving.send_signal(signal.SIGTERM)
        took = await eventually(
            lambda: views_are(client, [crashing, *staying], set(ids[1:])),
            timeout=1,
            interval=0.01,
        )
        print(f"graceful leave seen by the others after {took:.3f}s")

        crashing.kill()
        took = await eventually(
            lambda: views_are(client, staying, set(ids[2:])), timeout=TTL + 1, interval=0.05
        )
        print(f"crash seen by the others after {took:.3f}s (TTL {TTL}s)")
        for service in staying:
            service.send_signal(signal.SIGTERM)
