"""HTTP rows: `POST /orders` on qosmesh, on FastAPI + nats-py written by hand (the ceiling) and on
FastAPI + FastStream (the peer), each doing the same work in its own uvicorn process, under the
same load generator, in alternating rounds; and qosmesh with tracing on against off."""

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

import httpx
import nats
import psutil
from nats.js import JetStreamContext

from app.embedded import free_port
from app.example.messages import OrderPlaced
from app.messages import snake_case
from app.transports.jetstream.streams import stream_name
from bench import loadgen
from bench.cases.common import Env, unique
from bench.loadgen import Load
from bench.peers.orders_work import Names
from bench.report import Row, Table

BODY = json.dumps({"sku": "bench-sku", "quantity": 1})
IDLE_CPU = 5.0  # percent of a core: a service below it has caught up with its consumer's work


@dataclass
class Service:
    label: str
    command: list[str]
    env: dict[str, str]
    stream: str  # where its OrderPlaced events go
    durable: str  # the consumer that confirms the orders
    loads: list[Load] = field(default_factory=list)
    confirmed: list[float] = field(default_factory=list)  # orders confirmed per second
    proc: subprocess.Popen[bytes] | None = None
    url: str = ""

    def median(self, pick: Callable[[Load], float]) -> float:
        return statistics.median(pick(load) for load in self.loads)


def _services(env: Env) -> list[Service]:
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
        settings = {**ours, "APP_SERVICE_NAME": name, "APP_DATA_DIR": str(env.tmp / name)}
        command = [python, "-m", "bench.serve", "{port}", mode]
        stream = stream_name(OrderPlaced.subject_for(name))
        durable = f"{name}__{snake_case(OrderPlaced.type_name())}"  # as Bus.subscribe names it
        services.append(Service(label, command, settings, stream, durable))
    peers = [("FastAPI + nats-py", "bench.peers.http_raw")]
    if importlib.util.find_spec("faststream") is not None:
        peers.append(("FastAPI + FastStream", "bench.peers.http_faststream"))
    else:
        print("  FastAPI + FastStream: not installed here (python3 dev.py bench installs it)")
    for label, module in peers:
        names = Names(unique("peer").replace("-", "_"))
        command = [python, "-m", module, "{port}", env.nats_url, names.service]
        services.append(Service(label, command, base, names.stream, names.durable))
    return services


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


async def _drained(js: JetStreamContext, service: Service, timeout: float = 300.0) -> float:
    """Seconds until the service's consumer has confirmed every order of the load: a service
    whose handler fell behind during the load does that work now."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        info = await js.consumer_info(service.stream, service.durable)
        if info.num_pending == 0 and info.num_ack_pending == 0:
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{service.label}: orders still unconfirmed after {timeout:g} s")


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
    raw = by_label["FastAPI + nats-py"]
    peer = by_label.get("FastAPI + FastStream")

    def peer_value(pick: Callable[[Load], float]) -> float | None:
        return peer.median(pick) if peer is not None else None

    def rate(load: Load) -> float:
        return load.rate

    def confirmed(service: Service) -> float:
        return statistics.median(service.confirmed)

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
            peer=confirmed(peer) if peer is not None else None,
            peer_target=1.0,
            note="requests / (load + the time its consumer then took to confirm the rest)",
        ),
        Row(
            "POST /orders, answered during the load",
            "req/s",
            ours.median(rate),
            raw.median(rate),
            peer=peer_value(rate),
            note=f"{how}, {loadgen.generator()}; median of the rounds",
        ),
        Row(
            "POST /orders p50",
            "ms",
            ours.median(p50),
            raw.median(p50),
            lower_better=True,
            peer=peer_value(p50),
        ),
        Row(
            "POST /orders p99",
            "ms",
            ours.median(p99),
            raw.median(p99),
            lower_better=True,
            peer=peer_value(p99),
            peer_target=round(1 / 1.1, 2),
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
    services = _services(env)
    nc = await nats.connect(env.nats_url)
    js = nc.jetstream()
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
                drain = await _drained(js, service)
                service.loads.append(load)
                service.confirmed.append(load.requests / (load.requests / load.rate + drain))
                print(
                    f"  round {n + 1}: {service.label}: {load.rate:,.0f} req/s, "
                    f"p50 {load.p50 * 1000:.1f} ms, p99 {load.p99 * 1000:.1f} ms; "
                    f"{drain:.1f} s more to confirm them all: "
                    f"{service.confirmed[-1]:,.0f} orders/s",
                    flush=True,
                )
    finally:
        await nc.close()
        for service in services:
            _stop(service)
    compared, tracing = _rows(services, env, ceiling)
    return [
        Table(
            "HTTP POST /orders",
            "qosmesh",
            "FastAPI + nats-py",
            compared,
            peer_label="FastAPI + FastStream",
        ),
        Table("HTTP POST /orders, tracing", "tracing on", "tracing off", tracing),
    ]
