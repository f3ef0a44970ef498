"""With the broker gone or frozen, publishing endpoints answer 503 within a bound instead of
piling requests up, and memory stays flat."""

import asyncio
import time

import httpx
import psutil
import pytest

from app.faults import freeze, thaw

pytestmark = pytest.mark.slow

DEADLINE = 2.0


async def burst(url: str, count: int = 100) -> tuple[list[int], float]:
    """`count` concurrent POST /orders; the status codes and the slowest answer's seconds."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:

        async def one(n: int) -> tuple[int, float]:
            started = time.monotonic()
            response = await client.post("/orders", json={"sku": f"b{n}", "quantity": 1})
            return response.status_code, time.monotonic() - started

        answers = await asyncio.gather(*(one(n) for n in range(count)))
    return [status for status, _ in answers], max(took for _, took in answers)


async def test_stopped_or_frozen_broker_gets_quick_503s_and_flat_memory(
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
    statuses, _ = await burst(service.url, 20)
    assert set(statuses) == {202}
    baseline = process.memory_info().rss

    # Stopped: the client knows at once, so commands are refused at once.
    nats_server.kill()
    for _ in range(5):
        statuses, slowest = await burst(service.url)
        assert set(statuses) == {503}
        assert slowest < 2.0  # no publish budget is waited out: refused at the door
    print(f"\nbroker stopped: 5 x 100 requests, slowest answer {slowest:.2f}s")
    nats_server.start()
    await _ready(service.url)

    # Frozen: the connection looks alive but nothing answers; the publish budget bounds it.
    assert nats_server.pid is not None
    freeze(nats_server.pid)
    try:
        for _ in range(3):
            statuses, slowest = await burst(service.url)
            assert set(statuses) == {503}
            assert slowest < DEADLINE + 1.5
    finally:
        thaw(nats_server.pid)
    print(f"broker frozen: 3 x 100 requests, slowest answer {slowest:.2f}s")
    grown = (process.memory_info().rss - baseline) / 2**20
    print(f"memory grew {grown:.1f} MiB over 800 refused requests")
    assert grown < 25

    await _ready(service.url)
    statuses, _ = await burst(service.url, 20)
    assert set(statuses) == {202}


async def _ready(url: str) -> None:
    async with httpx.AsyncClient(base_url=url) as client:
        for _ in range(200):
            if (await client.get("/readyz")).status_code == 200:
                return
            await asyncio.sleep(0.05)
    pytest.fail("service did not become ready again")
