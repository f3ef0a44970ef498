"""HTTP rows: POST /orders through uvicorn with N concurrent clients, tracing on and off."""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from app.embedded import free_port
from bench.cases.common import Env, unique
from bench.report import Row

BODY = {"sku": "bench-sku", "quantity": 1}


@dataclass(slots=True)
class Load:
    rate: float
    p50: float
    p99: float


def _start(env: Env, mode: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    service = unique("http")
    environ = {
        **os.environ,
        "APP_NATS_URL": env.nats_url,
        "APP_SERVICE_NAME": service,
        "APP_DATA_DIR": str(env.tmp / service),
        "APP_LOG_LEVEL": "WARNING",
    }
    for name in [k for k in environ if k.startswith("OTEL_")]:
        del environ[name]
    log = open(env.tmp / f"{service}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.serve", str(port), mode],
        env=environ,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    return proc, f"http://127.0.0.1:{port}"


async def _ready(client: httpx.AsyncClient, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"bench.serve exited with {proc.returncode}")
        try:
            if (await client.get("/readyz")).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError("bench.serve not ready within 60 s")


async def _load(client: httpx.AsyncClient, requests: int, clients: int) -> Load:
    latencies: list[float] = []
    left = iter(range(requests))

    async def user() -> None:
        for _ in left:
            started = time.perf_counter()
            response = await client.post("/orders", json=BODY)
            latencies.append(time.perf_counter() - started)
            if response.status_code != 202:
                raise RuntimeError(f"POST /orders answered {response.status_code}")

    started = time.perf_counter()
    await asyncio.gather(*(user() for _ in range(clients)))
    seconds = time.perf_counter() - started
    q = statistics.quantiles(latencies, n=100)
    return Load(requests / seconds, q[49], q[98])


async def _measure(env: Env, mode: str) -> Load:
    proc, url = _start(env, mode)
    limits = httpx.Limits(max_connections=env.http_clients)
    try:
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
            await _ready(client, proc)
            await _load(client, max(50, env.http_requests // 10), env.http_clients)  # warm-up
            runs = [
                await _load(client, env.http_requests, env.http_clients) for _ in range(env.runs)
            ]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    return sorted(runs, key=lambda load: load.rate)[len(runs) // 2]


async def rows(env: Env, pick: Callable[[str], bool]) -> list[Row]:
    if not pick("http"):
        return []
    off = await _measure(env, "off")
    on = await _measure(env, "on")
    n, c = env.http_requests, env.http_clients
    out = [
        Row(
            "POST /orders",
            "req/s",
            on.rate,
            off.rate,
            target=0.85,
            note=f"{n} requests, {c} clients; target = overhead <= 15%",
        ),
        Row("POST /orders p50", "ms", on.p50 * 1000, off.p50 * 1000, lower_better=True),
        Row("POST /orders p99", "ms", on.p99 * 1000, off.p99 * 1000, lower_better=True),
    ]
    for row in out:
        print(f"  {row.name}: {row.ours:,.1f} vs {row.raw or 0:,.1f}", flush=True)
    return out
