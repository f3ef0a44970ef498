"""With the broker gone or frozen, commands still answer within a bound (their events wait in
the outbox) and memory stays flat; with the database gone, they answer 503 at once."""

import asyncio
import time

import httpx
import psutil
import pytest

from app.testing import eventually
from app.testing.faults import freeze, thaw

pytestmark = pytest.mark.slow

DEADLINE = 2.0


async def burst(url: str, count: int = 100) -> tuple[list[httpx.Response], float]:
    """`count` concurrent POST /orders; the answers and the slowest answer's seconds."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:

        async def one(n: int) -> tuple[httpx.Response, float]:
            started = time.monotonic()
            response = await client.post("/orders", json={"sku": f"b{n}", "quantity": 1})
            return response, time.monotonic() - started

        answers = await asyncio.gather(*(one(n) for n in range(count)))
    return [response for response, _ in answers], max(took for _, took in answers)


def statuses(answers: list[httpx.Response]) -> set[int]:
    return {response.status_code for response in answers}


async def test_stopped_or_frozen_broker_still_takes_commands_and_memory_stays_flat(
    service_process, nats_server
):
    service = service_process(
        {
            "APP_NATS_URL": nats_server.url,
            "APP_PUBLISH_ATTEMPT_TIMEOUT": "0.5",
            "APP_PUBLISH_DEADLINE": str(DEADLINE),
            "APP_LOG_LEVEL": "ERROR",
        },
        wait="/readyz",
    )
    process = psutil.Process(service.pid)
    answers, _ = await burst(service.url, 20)
    assert statuses(answers) == {202}
    baseline = process.memory_info().rss
    accepted = list(answers)

    # Stopped: a command writes to the database only, so the broker's absence costs nothing.
    nats_server.kill()
    for _ in range(5):
        answers, slowest = await burst(service.url)
        assert statuses(answers) == {202}
        assert slowest < 2.0
        accepted += answers
    print(f"\nbroker stopped: 5 x 100 requests, slowest answer {slowest:.2f}s")
    nats_server.start()

    # Frozen: the connection looks alive but nothing answers; commands do not wait for it.
    await eventually(lambda: _nats_ok(service.url), timeout=15)
    assert nats_server.pid is not None
    freeze(nats_server.pid)
    try:
        for _ in range(3):
            answers, slowest = await burst(service.url)
            assert statuses(answers) == {202}
            assert slowest < DEADLINE + 1.5
            accepted += answers
    finally:
        thaw(nats_server.pid)
    print(f"broker frozen: 3 x 100 requests, slowest answer {slowest:.2f}s")
    grown = (process.memory_info().rss - baseline) / 2**20
    print(f"memory grew {grown:.1f} MiB over 800 commands held in the outbox")
    assert grown < 25

    async with httpx.AsyncClient(base_url=service.url) as client:
        for response in accepted:
            order = f"/orders/{response.json()['order_id']}"
            await eventually(lambda o=order: _confirmed(client, o), timeout=60)


async def test_a_stopped_database_gets_quick_503s(service_process, nats_server, postgres_server):
    service = service_process(
        {
            "APP_NATS_URL": nats_server.url,
            "APP_DATABASE_URL": postgres_server.url,
            "APP_DATABASE_MIGRATE": "true",
            "APP_LOG_LEVEL": "ERROR",
        },
        wait="/readyz",
    )
    postgres_server.kill()
    for _ in range(3):
        answers, slowest = await burst(service.url)
        assert statuses(answers) == {503}
        assert all(response.headers["Retry-After"].isdigit() for response in answers)
        assert slowest < 2.0
    async with httpx.AsyncClient(base_url=service.url) as client:
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["database"] == "unavailable"
        postgres_server.start()
        await eventually(lambda: _status(client, "/readyz", 200), timeout=15)
    answers, _ = await burst(service.url, 20)
    assert statuses(answers) == {202}


async def _nats_ok(url: str) -> bool:
    async with httpx.AsyncClient(base_url=url) as client:
        return bool((await client.get("/readyz")).json()["checks"].get("nats") == "ok")


async def _confirmed(client: httpx.AsyncClient, path: str) -> bool:
    return bool((await client.get(path)).json()["status"] == "confirmed")


async def _status(client: httpx.AsyncClient, path: str, status: int) -> bool:
    return (await client.get(path)).status_code == status
