"""An instance comes back by itself from what nats-py does not come back from, and /healthz
fails only for what a restart can fix."""

import asyncio
import os
import time
from pathlib import Path

import httpx
import pytest

from app import supervision
from app.instance.services import services_of
from app.supervision import Supervision
from app.testing import eventually, running_app

JOB_DOMAIN = "tests.hardening.slow_domain"


@pytest.fixture
async def instance(settings_for, nats_server, tmp_path, monkeypatch):
    monkeypatch.setenv("SLOW_JOBS_LOG", str(tmp_path / "jobs.log"))
    settings = settings_for(
        nats_url=nats_server.url, ack_wait=2, publish_deadline=2, domain=JOB_DOMAIN
    )
    async with (
        running_app(settings) as (app, url),
        httpx.AsyncClient(base_url=url, timeout=10) as client,
    ):
        yield app, client


async def handled(client: httpx.AsyncClient, n: int) -> None:
    """A job goes through the whole path: HTTP, publish, stream, consumer, handler."""
    accepted = await client.post("/jobs", json={"n": n, "seconds": 0})
    assert accepted.status_code == 202, accepted.text
    log = Path(os.environ["SLOW_JOBS_LOG"])

    def done() -> bool:
        return log.exists() and f"done {n} " in log.read_text()

    await eventually(done, message=f"job {n} handled")


async def ready(client: httpx.AsyncClient) -> bool:
    return (await client.get("/readyz")).status_code == 200


async def test_a_connection_closed_by_a_protocol_error_is_built_again(instance):
    """The server answers a frame over max_payload with -ERR and nats-py closes for good: the
    instance builds its connection, bus, consumers, KV stores and discovery again."""
    app, client = instance
    await handled(client, 1)
    old = services_of(app).brokers.nc
    over = old.max_payload + 1
    await old._send_command(f"PUB qosmesh.hostile {over}\r\n".encode() + b"x" * over + b"\r\n")
    await old._flush_pending()
    await eventually(lambda: old.is_closed, message="the old connection closed for good")
    took = await eventually(lambda: ready(client), timeout=10, message="ready again")
    assert services_of(app).brokers.nc is not old
    assert services_of(app).brokers.nc.is_connected
    assert (await client.get("/healthz")).status_code == 200
    await handled(client, 2)  # publish and consume on the new connection
    nodes = (await client.get("/nodes")).json()
    assert services_of(app).discovery.self_info.node_id in str(nodes)
    assert took < 10


async def test_healthz_stays_ok_while_the_broker_is_away(instance, nats_server):
    _, client = instance
    nats_server.stop()
    try:
        await eventually(lambda: _not_ready(client), message="readyz 503 without a broker")
        for _ in range(5):
            assert (await client.get("/healthz")).status_code == 200
            await asyncio.sleep(0.2)
    finally:
        nats_server.start()
    await eventually(lambda: ready(client), timeout=15, message="ready again")


async def _not_ready(client: httpx.AsyncClient) -> bool:
    return not await ready(client)


async def test_a_supervised_task_that_died_triggers_a_rebuild(instance):
    app, client = instance
    services = services_of(app)
    old = services.runtime
    assert services.supervision is not None
    assert services.rebuilder is not None
    rebuilder = services.rebuilder

    async def crash() -> None:
        raise RuntimeError("a consumer loop hit a bug")

    services.supervision.start(crash(), "consume doomed")
    await eventually(lambda: rebuilder.current not in (None, old), message="the parts built again")
    await eventually(lambda: ready(client), message="ready again")
    assert (await client.get("/healthz")).status_code == 200
    await handled(client, 3)


async def test_a_task_dead_past_the_grace_period_fails_healthz(monkeypatch):
    """What no rebuild replaced: a restart of the process is the remedy left."""
    monkeypatch.setattr(supervision, "HEALTH_GRACE", 0.2)
    record = Supervision()

    async def crash() -> None:
        raise RuntimeError("boom")

    task = record.start(crash(), "rebuilder")
    await asyncio.wait({task})
    assert record.dead_for_long() == []
    started = time.monotonic()
    await eventually(lambda: record.dead_for_long() == ["rebuilder"], message="past the grace")
    assert time.monotonic() - started >= 0.1
    record.forget()
    assert record.dead_for_long() == []


async def test_healthz_fails_for_a_dead_task_nothing_started_again(instance, monkeypatch):
    """The rebuilder is held (as while draining) and a supervised task dies: past the grace
    period, liveness fails with the task's name, so Kubernetes restarts the pod."""
    app, client = instance
    monkeypatch.setattr(supervision, "HEALTH_GRACE", 0.3)
    services = services_of(app)
    assert services.supervision is not None
    assert services.rebuilder is not None
    services.rebuilder.hold()

    async def crash() -> None:
        raise RuntimeError("a loop hit a bug")

    services.supervision.start(crash(), "consume doomed")
    await asyncio.sleep(0.1)
    assert (await client.get("/healthz")).status_code == 200  # within the grace period

    async def failing() -> bool:
        response = await client.get("/healthz")
        dead = response.json().get("dead_tasks")
        return bool(response.status_code == 503 and dead == ["consume doomed"])

    await eventually(failing, timeout=5, message="/healthz 503 naming the task")
