"""HTTP rows: `POST /orders` on qosmesh, on FastAPI + nats-py written by hand (the ceiling), on
FastAPI + FastStream (the peer) and on FastAPI + FastStream + faststream-outbox (the outbox peer,
with qosmesh's guarantee), each doing the same work in its own uvicorn process, under the same
load generator, in alternating rounds; and qosmesh with tracing on against off."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg
import httpx
import psutil

from app.brokers.embedded import PostgresServer, free_port
from bench import loadgen
from bench.cases.common import Env, unique
from bench.loadgen import Load
from bench.peers.orders_work import Names
from bench.report import Row, Table

BODY = json.dumps({"sku": "bench-sku", "quantity": 1})
IDLE_CPU = 5.0  # percent of a core: a service below it has caught up with its consumer's work
OUTBOX_ORDERS = 300
OUTBOX_P99_BOUND = 50.0  # ms, on an idle machine
RAW = "FastAPI + nats-py"
PEER = "FastAPI + FastStream"
OUTBOX_PEER = "FastAPI + faststream-outbox"
# Each peer's label, module, and the package it needs that only .venv-bench has (None: none).
PEERS = (
    (RAW, "bench.peers.http_raw", None),
    (PEER, "bench.peers.http_faststream", "faststream"),
    (OUTBOX_PEER, "bench.peers.http_faststream_outbox", "faststream_outbox"),
)


@dataclass
class Service:
    label: str
    command: list[str]
    env: dict[str, str]
    database: str  # its own database on the benchmark's PostgreSQL
    pending: str  # SQL: how many of its orders are not confirmed yet
    loads: list[Load] = field(default_factory=list)
    confirmed: list[float] = field(default_factory=list)  # orders confirmed per second
    proc: subprocess.Popen[bytes] | None = None
    url: str = ""

    def median(self, pick: Callable[[Load], float]) -> float:
        return statistics.median(pick(load) for load in self.loads)


async def _services(env: Env, postgres: PostgresServer) -> list[Service]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    ours = {
        **base,
        "APP_NATS_URL": env.nats_url,
        "APP_LOG_LEVEL": "WARNING",
    }
    python = sys.executable
    services = []
    for label, mode in (("qosmesh", "off"), ("qosmesh, tracing on", "on")):
        name = unique("http")
        database = await _database_url(postgres, name.replace("-", "_"))
        settings = {
            **ours,
            "APP_SERVICE_NAME": name,
            "APP_DATA_DIR": str(env.tmp / name),
            "APP_DATABASE_URL": database,
            "APP_DATABASE_MIGRATE": "true",
        }
        command = [python, "-m", "bench.serve", "{port}", mode]
        pending = "SELECT count(*) FROM example_orders WHERE status = 'pending'"
        services.append(Service(label, command, settings, database, pending))
    for label, module, needs in PEERS:
        if needs is not None and importlib.util.find_spec(needs) is None:
            print(f"  {label}: not installed here (python3 dev.py bench installs it)")
            continue
        names = Names(unique("peer").replace("-", "_"))
        database = await _database_url(postgres, names.service)
        command = [python, "-m", module, "{port}", env.nats_url, database, names.service]
        pending = f"SELECT count(*) FROM {names.table} WHERE status = 'pending'"  # noqa: S608 (a generated name)
        services.append(Service(label, command, base, database, pending))
    return services


async def _database_url(postgres: PostgresServer, name: str) -> str:
    """A new database on the benchmark's server, for one service."""
    connection = await asyncpg.connect(postgres.url)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    return postgres.url.rsplit("/", 1)[0] + f"/{name}"


def _start(env: Env, service: Service) -> None:
    port = free_port()
    command = [part.format(port=port) for part in service.command]
    log = open(env.tmp / f"{unique('http-log')}.log", "wb")  # noqa: SIM115
    service.proc = subprocess.Popen(command, env=service.env, stdout=log, stderr=subprocess.STDOUT)
    service.url = f"http://127.0.0.1:{port}"


async def _ready(service: Service) -> None:
    assert service.proc is not None
    deadline = time.monotonic() + 60
    async with httpx.AsyncClient(base_url=service.url) as client:
        while time.monotonic() < deadline:
            if service.proc.poll() is not None:
                raise RuntimeError(f"{service.label} exited with {service.proc.returncode}")
            try:
                if (await client.get("/readyz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{service.label} not ready within 60 s")


async def _idle(services: list[Service], timeout: float = 60.0) -> None:
    """Wait until no service is still busy with the last round's messages, so that none
    spends a core during another's round."""
    processes = [psutil.Process(s.proc.pid) for s in services if s.proc is not None]
    deadline = time.monotonic() + timeout
    for process in processes:
        process.cpu_percent()
    while time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        if all(process.cpu_percent() < IDLE_CPU for process in processes):
            return
    print("  (a service stayed busy between rounds)")


async def _load(service: Service, seconds: float, connections: int) -> Load:
    load = await asyncio.to_thread(loadgen.run, f"{service.url}/orders", seconds, connections, BODY)
    if load.errors:
        raise RuntimeError(f"{service.label}: {load.errors} of {load.requests} requests failed")
    return load


async def _ceiling(env: Env) -> Load:
    """The generator against an endpoint that does nothing: what it can drive at most."""
    trivial = Service(
        "trivial", [sys.executable, "-m", "bench.peers.trivial", "{port}"], {}, "", ""
    )
    trivial.env = dict(os.environ)
    _start(env, trivial)
    try:
        await _wait_listening(trivial)
        return await _load(trivial, env.http_seconds, env.http_clients)
    finally:
        _stop(trivial)


async def _wait_listening(service: Service) -> None:
    deadline = time.monotonic() + 30
    async with httpx.AsyncClient(base_url=service.url) as client:
        while time.monotonic() < deadline:
            try:
                await client.post("/orders", content=BODY)
                return
            except httpx.HTTPError:
                await asyncio.sleep(0.1)
    raise RuntimeError(f"{service.label} not listening within 30 s")


async def _drained(service: Service, timeout: float = 300.0) -> float:
    """Seconds until the service has confirmed every order of the load: a service whose
    handler (or outbox relay) fell behind during the load does that work now."""
    started = time.monotonic()
    connection = await asyncpg.connect(service.database)
    try:
        while time.monotonic() - started < timeout:
            if await connection.fetchval(service.pending) == 0:
                return time.monotonic() - started
            await asyncio.sleep(0.05)
    finally:
        await connection.close()
    raise RuntimeError(f"{service.label}: orders still unconfirmed after {timeout:g} s")


async def _outbox_latency(service: Service, orders: int) -> tuple[float, float]:
    """p50 and p99 (ms) from an order's outbox row being written to the broker's ack of its
    event, over `orders` commands sent one at a time, read off the outbox table."""
    connection = await asyncpg.connect(service.database)
    try:
        after = await connection.fetchval("SELECT coalesce(max(id), 0) FROM qosmesh_outbox")
        async with httpx.AsyncClient(base_url=service.url) as client:
            for _ in range(orders):
                headers = {"content-type": "application/json"}
                (await client.post("/orders", content=BODY, headers=headers)).raise_for_status()
                await asyncio.sleep(0.01)
        await _drained(service)
        rows = await connection.fetch(
            "SELECT extract(epoch FROM sent_at - created_at) * 1000 AS ms"
            " FROM qosmesh_outbox WHERE id > $1 AND sent_at IS NOT NULL",
            after,
        )
    finally:
        await connection.close()
    latencies = sorted(float(row["ms"]) for row in rows)
    if not latencies:
        raise RuntimeError("no outbox row was sent")
    return statistics.median(latencies), latencies[int(len(latencies) * 0.99) - 1]


def _stop(service: Service) -> None:
    if service.proc is None:
        return
    service.proc.send_signal(signal.SIGINT)
    try:
        service.proc.wait(30)
    except subprocess.TimeoutExpired:
        service.proc.kill()


def _rows(services: list[Service], env: Env, ceiling: Load) -> tuple[list[Row], list[Row]]:
    by_label = {s.label: s for s in services}
    ours, traced = by_label["qosmesh"], by_label["qosmesh, tracing on"]
    raw = by_label[RAW]
    peer, outbox_peer = by_label.get(PEER), by_label.get(OUTBOX_PEER)

    def value(service: Service | None, pick: Callable[[Load], float]) -> float | None:
        return service.median(pick) if service is not None else None

    def rate(load: Load) -> float:
        return load.rate

    def confirmed(service: Service) -> float:
        return statistics.median(service.confirmed)

    def confirmed_by(service: Service | None) -> float | None:
        return confirmed(service) if service is not None else None

    def p50(load: Load) -> float:
        return load.p50 * 1000

    def p99(load: Load) -> float:
        return load.p99 * 1000

    how = f"{env.http_seconds:g} s x {env.runs} rounds, {env.http_clients} connections"
    compared = [
        Row(
            "POST /orders, orders confirmed",
            "per s",
            confirmed(ours),
            confirmed(raw),
            peer=confirmed_by(peer),
            peer_target=1.0,
            outbox_peer=confirmed_by(outbox_peer),
            note="requests / (load + the time its consumer then took to confirm the rest)",
        ),
        Row(
            "POST /orders, answered during the load",
            "req/s",
            ours.median(rate),
            raw.median(rate),
            peer=value(peer, rate),
            outbox_peer=value(outbox_peer, rate),
            note=f"{how}, {loadgen.generator()}; median of the rounds",
        ),
        Row(
            "POST /orders p50",
            "ms",
            ours.median(p50),
            raw.median(p50),
            lower_better=True,
            peer=value(peer, p50),
            outbox_peer=value(outbox_peer, p50),
        ),
        Row(
            "POST /orders p99",
            "ms",
            ours.median(p99),
            raw.median(p99),
            lower_better=True,
            peer=value(peer, p99),
            peer_target=round(1 / 1.1, 2),
            outbox_peer=value(outbox_peer, p99),
            note="target: p99 <= 1.1x the peer's",
        ),
        Row(
            "load generator ceiling",
            "req/s",
            ceiling.rate,
            note="the same load against an endpoint that does nothing",
        ),
    ]
    tracing = [
        Row(
            "POST /orders, orders confirmed",
            "per s",
            confirmed(traced),
            confirmed(ours),
            target=0.85,
            note=f"{how}; target = overhead <= 15%",
        ),
        Row("POST /orders p50", "ms", traced.median(p50), ours.median(p50), lower_better=True),
        Row("POST /orders p99", "ms", traced.median(p99), ours.median(p99), lower_better=True),
    ]
    return compared, tracing


async def tables(env: Env, pick: Callable[[str], bool]) -> list[Table]:
    if not pick("http"):
        return []
    if importlib.util.find_spec("app.example") is None:
        print("  HTTP rows: they measure the example's POST /orders, and this service has none")
        return []
    if loadgen.generator() != "wrk":
        print("  wrk not found (apt-get install wrk, brew install wrk): bench/loadgen.py loads")
    ceiling = await _ceiling(env)
    print(f"  load generator ({loadgen.generator()}) ceiling: {ceiling.rate:,.0f} req/s")
    postgres = PostgresServer(env.tmp / "postgres")
    await asyncio.to_thread(postgres.start, 30.0)
    services = await _services(env, postgres)
    try:
        for service in services:
            _start(env, service)
        for service in services:
            await _ready(service)
            await _load(service, min(2.0, env.http_seconds), env.http_clients)  # warm-up
        for n in range(env.runs):
            for service in services:
                await _idle(services)
                load = await _load(service, env.http_seconds, env.http_clients)
                drain = await _drained(service)
                service.loads.append(load)
                service.confirmed.append(load.requests / (load.requests / load.rate + drain))
                print(
                    f"  round {n + 1}: {service.label}: {load.rate:,.0f} req/s, "
                    f"p50 {load.p50 * 1000:.1f} ms, p99 {load.p99 * 1000:.1f} ms; "
                    f"{drain:.1f} s more to confirm them all: "
                    f"{service.confirmed[-1]:,.0f} orders/s",
                    flush=True,
                )
        await _idle(services)
        latency = await _outbox_latency(services[0], OUTBOX_ORDERS)
    finally:
        for service in services:
            _stop(service)
        postgres.stop()
    compared, tracing = _rows(services, env, ceiling)
    p50, p99 = latency
    print(f"  outbox, commit to broker ack: p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    how = f"{OUTBOX_ORDERS} orders one at a time on an idle machine; the raw column is the bound"
    outbox_rows = [
        Row("commit to broker ack, p50", "ms", p50, note=how),
        Row("commit to broker ack, p99", "ms", p99, OUTBOX_P99_BOUND, 1.0, lower_better=True),
    ]
    return [
        Table(
            "HTTP POST /orders",
            "qosmesh",
            RAW,
            compared,
            peer_label=PEER,
            outbox_peer_label=OUTBOX_PEER,
        ),
        Table("HTTP POST /orders, tracing", "tracing on", "tracing off", tracing),
        Table("Outbox: from the commit to the broker's ack", "qosmesh", "bound", outbox_rows),
    ]
