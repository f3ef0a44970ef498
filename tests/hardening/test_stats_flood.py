"""Anyone on the bus may ask every instance for its `$SRV.STATS`, and anyone who reaches the HTTP
port for the console's numbers. Two real instances on a real nats-server, each asked far more
often than it answers: neither is ever seen gone, the flooded one keeps its lease, and its
`/healthz` answers throughout. (A STATS reply used to cost a Prometheus scrape, about 11 ms of
the event loop: 2,000 requests blocked an instance for 22 s and it lost its key and its lease.)

QOSMESH_FLOOD_SECONDS sets how long the sustained phases last (30 s of STATS requests and 10 s
of console polling by default)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import os
import statistics
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nats
import psutil
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from prometheus_client.parser import text_string_to_metric_families

from app.instance.micro import REPLIES_PER_SECOND, REPLY_BURST
from app.testing import NatsServer, ServiceProcess

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SERVICE = "console-test"
LEASE = "scheduler-jetstream"  # the fallback scheduler's mover runs under it
TTL = 2.0  # of the discovery keys and the leases: a loop stalled 2 s loses both
BURST = 2000
RATE = 200  # STATS requests a second in the sustained phase
STATS_SECONDS = float(os.environ.get("QOSMESH_FLOOD_SECONDS", "30"))
POLL_SECONDS = float(os.environ.get("QOSMESH_FLOOD_SECONDS", "10"))
POLLERS, POLL_EVERY = 20, 0.1
PROBE_EVERY = 0.05


@dataclass
class Probes:
    """`/healthz` of the flooded instance, and its node as its peer sees it, probed from a thread
    of their own, so the test's event loop, busy flooding, does not delay them."""

    instance: ServiceProcess
    peer: ServiceProcess
    node_id: str
    healthz: list[tuple[float, int, float]] = field(default_factory=list)
    """(when, status, seconds) per probe; status 0 when it did not answer within 10 s."""
    seen_by_peer: list[int] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with httpx.Client(timeout=10) as client:
            n = 0
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    status = client.get(self.instance.url + "/healthz").status_code
                except httpx.HTTPError:
                    status = 0
                self.healthz.append((started, status, time.monotonic() - started))
                if n % 10 == 0:
                    self.seen_by_peer.append(self.peer_view(client))
                n += 1
                self._stop.wait(max(0.0, PROBE_EVERY - (time.monotonic() - started)))

    def peer_view(self, client: httpx.Client) -> int:
        try:
            return client.get(f"{self.peer.url}/nodes/{self.node_id}").status_code
        except httpx.HTTPError:
            return 0

    def __enter__(self) -> Probes:
        self._thread = threading.Thread(target=self.run, name="probes", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=15)


@dataclass
class Keys:
    """The flooded instance's discovery key and the lease key, as a KV watcher sees them."""

    node: list[tuple[float, str | None]] = field(default_factory=list)
    """(when, operation) of every change to the instance's discovery key."""
    lease: list[tuple[str | None, str]] = field(default_factory=list)
    """(operation, holder) of every change to the lease's key."""

    def longest_silence(self) -> float:
        times = [at for at, _ in self.node]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


@contextlib.asynccontextmanager
async def watching(nc: NatsClient, keys: Keys, node_key: str) -> AsyncIterator[None]:
    js = nc.jetstream()
    nodes = await (await js.key_value("qosmesh_nodes")).watch(node_key)
    leases = await (await js.key_value(f"{SERVICE.replace('-', '_')}_leases")).watch(LEASE)

    async def follow(watcher: Any, note: Callable[[Any], None]) -> None:
        async for entry in watcher:
            if entry is not None:  # None: the initial values are all in
                note(entry)

    def on_node(entry: Any) -> None:
        keys.node.append((time.monotonic(), entry.operation))

    def on_lease(entry: Any) -> None:
        holder = json.loads(entry.value)["holder"] if entry.value else ""
        keys.lease.append((entry.operation, holder))

    tasks = [
        asyncio.create_task(follow(nodes, on_node)),
        asyncio.create_task(follow(leases, on_lease)),
    ]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await nodes.stop()  # type: ignore[no-untyped-call]  # untyped in nats-py
        await leases.stop()  # type: ignore[no-untyped-call]


@dataclass
class Pair:
    instance: ServiceProcess
    peer: ServiceProcess
    node_id: str


@pytest.fixture
def pair(service_process: Callable[..., ServiceProcess], nats_server: NatsServer, tmp_path: Path):
    """Two instances; the first holds the lease `scheduler-jetstream` before the second starts."""
    env = {
        "APP_NATS_URL": nats_server.url,
        "APP_DOMAIN": "tests.console.flaky_domain",
        "APP_SERVICE_NAME": SERVICE,
        "APP_NODE_TTL": str(TTL),
        "APP_LEASE_TTL": str(TTL),
        "APP_SCHEDULER": "fallback",
        "APP_QOS1_TRANSPORT": "jetstream",  # its scheduler holds the lease LEASE
        "APP_LOG_LEVEL": "WARNING",
        "FLAKY_FLAG": str(tmp_path / "flag"),
        "FLAKY_EFFECTS": str(tmp_path / "effects"),
        "PYTHONPATH": str(ROOT),
    }
    instance = service_process(env, wait="/readyz")

    def me() -> dict[str, Any]:
        nodes = httpx.get(instance.url + "/nodes", timeout=5).json()
        return next(n for n in nodes["nodes"] if n["node_id"] == nodes["self"])

    deadline = time.monotonic() + 15
    while me()["metadata"].get("leases") != LEASE:
        assert time.monotonic() < deadline, "the first instance never took the lease"
        time.sleep(0.1)
    peer = service_process(env, wait="/readyz")
    return Pair(instance, peer, me()["node_id"])


def scraped(url: str, name: str, **labels: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def assert_alive_and_holding(pair: Pair, probes: Probes, keys: Keys, left_before: float) -> None:
    """The instance answered every probe, its peer always saw it, and the lease stayed its."""
    assert len(probes.healthz) > 50
    failed = [(status, seconds) for _, status, seconds in probes.healthz if status != 200]
    assert failed == [], f"/healthz did not answer 200: {failed[:5]}"
    assert probes.seen_by_peer
    assert set(probes.seen_by_peer) == {200}
    assert scraped(pair.peer.url, "qosmesh_discovery_events_total", type="left") == left_before
    assert [op for _, op in keys.node if op not in (None, "PUT")] == []  # never deleted nor expired
    assert len(keys.node) > 3
    assert keys.longest_silence() < TTL  # heartbeats every TTL/3 kept coming
    assert keys.lease, "no renewal of the lease seen"
    assert {(op or "PUT", holder) for op, holder in keys.lease} == {("PUT", pair.node_id)}
    metadata = httpx.get(f"{pair.instance.url}/nodes/{pair.node_id}", timeout=5).json()["metadata"]
    assert metadata["leases"] == LEASE
    assert f"lease {LEASE} lost" not in pair.instance.log(400)


@dataclass
class Phase:
    """What one phase cost the flooded instance, and how `/healthz` answered meanwhile."""

    name: str
    requests: int
    cpu: float
    """The instance's CPU seconds in the phase, beyond what it spends idle."""
    healthz: list[float] = field(default_factory=list)

    def report(self) -> str:
        latencies = sorted(self.healthz) or [math.inf]
        return (
            f"{self.name}: {self.cpu / self.requests * 1e6:.0f} µs of CPU per request; "
            f"/healthz p50 {statistics.median(latencies) * 1000:.1f} ms, "
            f"p99 {p99(latencies) * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms "
            f"({len(self.healthz)} probes)"
        )

    def assert_healthz_kept_answering(self) -> None:
        assert len(self.healthz) >= 10, self.report()
        assert p99(self.healthz) < 0.5, self.report()
        assert max(self.healthz) < 1.5, self.report()


def p99(latencies: list[float]) -> float:
    if len(latencies) < 2:
        return max(latencies, default=math.inf)
    return statistics.quantiles(latencies, n=100, method="inclusive")[98]


class Meter:
    """The flooded instance's CPU, less its idle rate, and the probes of a window."""

    def __init__(self, process: psutil.Process, probes: Probes, idle: float) -> None:
        self._process, self._probes, self.idle = process, probes, idle

    @contextlib.contextmanager
    def phase(self, name: str, requests: Callable[[], int]) -> Iterator[list[Phase]]:
        found: list[Phase] = []
        started, cpu = time.monotonic(), cpu_seconds(self._process)
        yield found
        ended = time.monotonic()
        spent = cpu_seconds(self._process) - cpu - self.idle * (ended - started)
        healthz = [s for at, status, s in self._probes.healthz if started <= at <= ended]
        found.append(Phase(name, requests(), spent, healthz))


async def flood_stats(nc: NatsClient, inbox: str, meter: Meter) -> tuple[Phase, Phase, float]:
    """BURST requests at once, then RATE a second for STATS_SECONDS; the two phases, and the
    seconds from the burst to the last reply."""
    started = time.monotonic()
    with meter.phase("STATS burst", lambda: BURST) as burst:
        for _ in range(BURST):
            await nc.publish("$SRV.STATS", b"", reply=inbox)
        await nc.flush()
        await asyncio.sleep(1.0)
    ticks = int(STATS_SECONDS / 0.05)
    with meter.phase(f"STATS {RATE}/s", lambda: ticks * RATE // 20) as sustained:
        for tick in range(ticks):
            await asyncio.sleep(max(0.0, started + 1.0 + tick * 0.05 - time.monotonic()))
            for _ in range(RATE // 20):
                await nc.publish("$SRV.STATS", b"", reply=inbox)
        await nc.flush()
        await asyncio.sleep(0.5)  # the last replies on their way
    return burst[0], sustained[0], time.monotonic() - started


async def poll_console(url: str, meter: Meter) -> tuple[Phase, list[int]]:
    """POLLERS clients ask for the console's messaging summary every POLL_EVERY seconds."""
    statuses: list[int] = []
    until = time.monotonic() + POLL_SECONDS

    async def poll() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            while time.monotonic() < until:
                started = time.monotonic()
                try:
                    statuses.append((await client.get("/console/api/messaging")).status_code)
                except httpx.HTTPError:
                    statuses.append(0)
                await asyncio.sleep(max(0.0, POLL_EVERY - (time.monotonic() - started)))

    with meter.phase(f"{POLLERS} console pollers", lambda: len(statuses)) as polled:
        await asyncio.gather(*(poll() for _ in range(POLLERS)))
    return polled[0], statuses


@pytest.mark.long  # CI: the fault schedules' stats-flood (seed 505), with liveness checked
async def test_stats_floods_and_console_polls_leave_the_instance_alive_and_holding_its_lease(
    pair: Pair, nats_server: NatsServer
):
    """2,000 `$SRV.STATS` requests at once, then 200 a second, then 20 console pollers: the
    instance answers at most REPLY_BURST at once and REPLIES_PER_SECOND after (the rest are
    counted as refused), serves every poll, and is never late enough to lose its key or lease."""
    nc = await nats.connect(nats_server.url)
    answered: Counter[str] = Counter()

    async def collect(msg: Msg) -> None:
        answered[json.loads(msg.data)["id"]] += 1

    inbox = nc.new_inbox()
    await nc.subscribe(inbox, cb=collect)
    process = psutil.Process(pair.instance.pid)
    left_before = scraped(pair.peer.url, "qosmesh_discovery_events_total", type="left")
    refused_before = scraped(pair.instance.url, "qosmesh_micro_refused_total", verb="STATS")
    keys = Keys()
    with Probes(pair.instance, pair.peer, pair.node_id) as probes:
        async with watching(nc, keys, f"{SERVICE}.{pair.node_id}"):
            idle_from, idle_cpu = time.monotonic(), cpu_seconds(process)
            await asyncio.sleep(2.0)
            idle = (cpu_seconds(process) - idle_cpu) / (time.monotonic() - idle_from)
            meter = Meter(process, probes, idle)
            burst, sustained, flooded = await flood_stats(nc, inbox, meter)
            polled, statuses = await poll_console(pair.instance.url, meter)
    await nc.close()

    sent = burst.requests + sustained.requests
    mine = answered[pair.node_id]
    refused = scraped(pair.instance.url, "qosmesh_micro_refused_total", verb="STATS")
    refused -= refused_before
    print(
        f"\n{sent} STATS requests: {mine} answered and {refused:.0f} refused by the flooded "
        f"instance, {answered.total() - mine} answered by its peer; idle CPU {idle * 100:.1f} %"
        f"\nlongest silence of its discovery key {keys.longest_silence():.2f}s"
    )
    for phase in (burst, sustained, polled):
        print(phase.report())
    for phase in (burst, sustained, polled):
        phase.assert_healthz_kept_answering()
    assert_alive_and_holding(pair, probes, keys, left_before)
    assert mine >= REPLY_BURST  # it answered: limited, not silenced
    assert mine <= REPLY_BURST + REPLIES_PER_SECOND * flooded
    assert mine + refused == sent
    assert set(statuses) == {200}
    assert len(statuses) >= POLLERS * POLL_SECONDS / POLL_EVERY * 0.5
