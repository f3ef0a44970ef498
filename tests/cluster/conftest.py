"""Service instances on a 3-node JetStream cluster, and what the tests read from them."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pytest

from app.brokers.embedded import PostgresServer
from app.testing import NatsCluster, ServiceProcess, eventually
from tests.discovery.conftest import node_id, status, view

TTL = 15.0
"""APP_NODE_TTL on the cluster: longer than a leader election (followers wait 4-9 s)."""

STREAMS = [
    "QOSMESH_ORDER_PLACED",
    "QOSMESH_PAYMENT_CAPTURED",
    "QOSMESH_DLQ",
    "QOSMESH_ADVISORIES",
    "KV_qosmesh_nodes",
    "KV_qosmesh_processed",
]
"""Every stream qosmesh with the example creates; a KV bucket is the stream `KV_<bucket>`. The
example's orders and HTTP keys are in PostgreSQL."""


def cluster_env(cluster: NatsCluster, database: PostgresServer) -> dict[str, str]:
    """Settings for an instance on the cluster: three replicas of everything, heartbeats and
    publishes that outlast a leader election, and the one database the instances share."""
    return {
        "APP_NATS_URL": cluster.urls,
        "APP_DATABASE_URL": database.url,
        "APP_DATABASE_MIGRATE": "true",
        "APP_REPLICAS": "3",
        "APP_NODE_TTL": str(TTL),
        "APP_HEARTBEAT_INTERVAL": "2",
        "APP_PUBLISH_DEADLINE": "15",
        "APP_PUBLISH_ATTEMPTS": "30",
        "APP_ACK_WAIT": "4",
    }


async def views_are(
    client: httpx.AsyncClient, services: list[ServiceProcess], expected: set[str]
) -> bool:
    return all([await view(client, service) == expected for service in services])


async def start_instances(
    service_process: Callable[..., ServiceProcess],
    cluster: NatsCluster,
    count: int,
    client: httpx.AsyncClient,
    database: PostgresServer,
) -> tuple[list[ServiceProcess], list[str]]:
    """Start `count` instances on the cluster at once; return them once every one is ready
    and sees all the others, with their node ids in the same order."""
    started = time.monotonic()
    services = [service_process(cluster_env(cluster, database), wait=None) for _ in range(count)]

    async def all_ready() -> bool:
        for service in services:
            if service.proc is not None and service.proc.poll() is not None:
                pytest.fail(f"{service.url} exited:\n{service.log()}")
        return all([await status(client, s.url + "/readyz") == 200 for s in services])

    await eventually(all_ready, timeout=45, interval=0.1, message="every instance ready")
    ids = [await node_id(client, service) for service in services]
    await eventually(lambda: views_are(client, services, set(ids)), timeout=5, message="full views")
    print(f"\n{count} instances ready and complete in {time.monotonic() - started:.1f}s")
    return services, ids
