"""Measured membership latencies on a real nats-server (run with -s to see the figures)."""

from __future__ import annotations

import asyncio
import statistics
import time

import pytest

from app.testing import eventually
from tests.discovery.conftest import TTL

pytestmark = pytest.mark.slow


def summary(samples: list[float]) -> str:
    ms = sorted(1000 * s for s in samples)
    return f"median {statistics.median(ms):.1f} ms, min {ms[0]:.1f}, max {ms[-1]:.1f} (n={len(ms)})"


async def test_join_and_leave_latencies(start_node, record):
    observer = await start_node()
    seen = record(observer)

    joins, early = [], 0
    nodes = []
    for _ in range(20):
        started = time.monotonic()
        node = await start_node()
        ready = time.monotonic()
        await eventually(lambda n=node: seen.first(n.node_id, "joined"), timeout=1, interval=0.005)
        joined = seen.first(node.node_id, "joined")
        assert joined is not None
        joins.append(joined - started)
        early += joined <= ready
        nodes.append(node)

    leaves = []
    for node in nodes[:10]:
        started = time.monotonic()
        await node.discovery.deregister()
        await eventually(lambda n=node: seen.first(n.node_id, "left"), timeout=1, interval=0.005)
        left = seen.first(node.node_id, "left")
        assert left is not None
        leaves.append(left - started)

    victims = nodes[10:15]
    crashed, crashed_wall = time.monotonic(), time.time()
    last_beats = [crashed_wall - v.discovery.self_info.last_seen.timestamp() for v in victims]
    await asyncio.gather(*(victim.crash() for victim in victims))
    await eventually(
        lambda: all(seen.first(v.node_id, "left") for v in victims), timeout=TTL + 1, interval=0.01
    )
    crashes = [seen.first(v.node_id, "left") - crashed for v in victims]
    after_beat = [took + beat for took, beat in zip(crashes, last_beats, strict=True)]
    assert all(seen.left(v.node_id) == ["expired"] for v in victims)

    print(f"\njoin seen by a peer, from the start of registration: {summary(joins)}")
    print(f"peers saw the join before the joiner finished starting: {early} of 20")
    print(f"graceful leave seen by a peer:                        {summary(leaves)}")
    print(f"crash leave seen by a peer (TTL {TTL}s), from the crash:          {summary(crashes)}")
    print(
        f"crash leave seen by a peer (TTL {TTL}s), from the last heartbeat: {summary(after_beat)}"
    )
    assert statistics.median(joins) < 1
    assert max(leaves) < 1
    assert max(crashes) < TTL + 1
