"""Discovery rows: join and graceful leave seen by 3 peers, crash detection with TTL 2 s, and
the CPU one instance spends watching a bucket of 200 heartbeating nodes."""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager

import nats

from app.brokers import Brokers, open_brokers
from app.discovery import KvDiscovery
from app.discovery.bucket import open_discovery_bucket
from app.discovery.models import NodeInfo, now
from app.transports.registry import needs_redis
from bench.cases.common import Env, settings, unique
from bench.report import Row

PEERS = 3
TTL = 2.0
SIMULATED = 200
POLL = 0.001


def _p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) > 1 else values[0]


@asynccontextmanager
async def _node(env: Env, bucket: str, stack: AsyncExitStack) -> AsyncIterator[KvDiscovery]:
    config = settings(env, "peer", discovery_bucket=bucket, node_ttl=TTL)
    brokers = await stack.enter_async_context(open_brokers(config, redis=needs_redis(config)))
    discovery = KvDiscovery(brokers, config)
    await discovery.start()
    try:
        yield discovery
    finally:
        await discovery.close()


async def _until(check: Callable[[], bool], timeout: float = 30.0) -> float:
    started = time.perf_counter()
    while not check():
        if time.perf_counter() - started > timeout:
            raise TimeoutError("discovery condition not reached")
        await asyncio.sleep(POLL)
    return time.perf_counter() - started


async def join_leave(env: Env) -> list[Row]:
    bucket = unique("bench_nodes").replace("-", "_")
    joins: list[float] = []
    leaves: list[float] = []
    crashes: list[float] = []
    async with AsyncExitStack() as stack:
        peers = [await stack.enter_async_context(_node(env, bucket, stack)) for _ in range(PEERS)]
        config = settings(env, "joiner", discovery_bucket=bucket, node_ttl=TTL)
        for _ in range(env.discovery_samples):
            async with open_brokers(config, redis=needs_redis(config)) as brokers:
                node = KvDiscovery(brokers, config)
                started = time.perf_counter()
                await node.start()
                node_id = node.self_info.node_id
                await _until(lambda: all(p.get(node_id) for p in peers))  # noqa: B023
                joins.append(time.perf_counter() - started)
                started = time.perf_counter()
                await node.deregister()
                await _until(lambda: not any(p.get(node_id) for p in peers))  # noqa: B023
                leaves.append(time.perf_counter() - started)
                await node.close()
        for _ in range(env.runs):
            crashes.append(await _crash(config, peers))
    return [
        Row("join seen by 3 peers, median", "s", statistics.median(joins)),
        Row("join seen by 3 peers, p99", "s", _p99(joins), note=f"{len(joins)} joins"),
        Row("graceful leave seen by 3 peers, median", "s", statistics.median(leaves)),
        Row("graceful leave seen by 3 peers, p99", "s", _p99(leaves), note=f"{len(leaves)} leaves"),
        Row(
            "crash detected by 3 peers (TTL 2 s)",
            "s",
            statistics.median(crashes),
            note=f"median of {len(crashes)}; from connection drop to NodeLeft",
        ),
    ]


async def _crash(config: object, peers: list[KvDiscovery]) -> float:
    async with open_brokers(config, redis=needs_redis(config)) as brokers:  # type: ignore[arg-type]
        node = KvDiscovery(brokers, config)  # type: ignore[arg-type]
        await node.start()
        node_id = node.self_info.node_id
        await _until(lambda: all(p.get(node_id) for p in peers))
        started = time.perf_counter()
        await brokers.nc.close()  # gone without a goodbye
        await _until(lambda: not any(p.get(node_id) for p in peers))
        seconds = time.perf_counter() - started
        for task in node._tasks:  # its connection is closed: stop it without a goodbye
            task.cancel()
        return seconds


async def cpu_share(env: Env) -> Row:
    bucket = unique("bench_watch").replace("-", "_")
    config = settings(env, "sim", discovery_bucket=bucket)
    nc = await nats.connect(env.nats_url)
    js = nc.jetstream()
    opened = await open_discovery_bucket(nc, js, config)
    interval = opened.ttl / 3
    started = now()
    nodes = [
        NodeInfo(
            node_id=f"sim-{i}",
            service="sim",
            version="0",
            address=f"http://10.0.0.{i % 250}:8000",
            started_at=started,
            last_seen=started,
        )
        for i in range(SIMULATED)
    ]
    stop = asyncio.Event()

    async def heartbeat() -> None:
        while not stop.is_set():
            for node in nodes:
                beat = node.model_copy(update={"last_seen": now()})
                await opened.kv.put(node.key, beat.to_json())
                await asyncio.sleep(interval / SIMULATED)

    beats = asyncio.create_task(heartbeat())
    seconds = 3.0 if env.runs == 1 else 10.0
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.watcher",
            env.nats_url,
            bucket,
            str(seconds),
            str(SIMULATED + 1),
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await proc.communicate()
    finally:
        stop.set()
        await beats
        await nc.close()
    result = json.loads(out.decode().strip().splitlines()[-1])
    share = 100 * result["cpu"] / result["wall"]
    return Row(
        f"CPU of one watcher, {SIMULATED} nodes heartbeating",
        "%",
        share,
        note=(
            f"{SIMULATED / interval:.0f} puts/s (TTL {opened.ttl:g} s, beat every "
            f"{interval:g} s); % of one core over {seconds:g} s; saw {result['nodes']} nodes"
        ),
    )


async def rows(env: Env, pick: Callable[[str], bool]) -> list[Row]:
    if not pick("discovery"):
        return []
    out = [*await join_leave(env), await cpu_share(env)]
    for row in out:
        print(f"  {row.name}: {row.ours:.3f} {row.unit}", flush=True)
    return out


__all__ = ["Brokers", "rows"]
