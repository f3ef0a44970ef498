"""Redis Streams rows: pipelined publish, and consume + ack, beside redis-py and FastStream."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis

from app.bus import Bus
from app.messages import Message
from bench.cases.common import (
    Blob,
    Clock,
    Counter,
    Env,
    rate,
    rates_with_peer,
    running_bus,
    settings,
    unique,
)
from bench.peers import faststream_messaging as faststream
from bench.report import Row

BATCH = 256
MAXLEN = 100_000  # approximate trimming, as qosmesh's APP_REDIS_MAXLEN default


def _settings(env: Env, service: str) -> Any:
    return settings(
        env, service, qos1_transport="redis", redis_url=env.redis_url, redis_block_ms=100
    )


async def _router_publish(env: Env) -> float:
    async with running_bus(_settings(env, unique("rp"))) as (bus, _):
        msgs = [Blob(data="x" * env.size) for _ in range(env.messages)]
        with Clock() as clock:
            await bus.publish_many(msgs, window=env.window)
    return rate(env.messages, clock.seconds)


async def _raw_fill(client: aioredis.Redis, key: str, env: Env) -> None:
    payload = b"x" * env.size
    for start in range(0, env.messages, BATCH):
        async with client.pipeline(transaction=False) as pipe:
            for _ in range(min(BATCH, env.messages - start)):
                pipe.xadd(key, {"$body": payload}, maxlen=MAXLEN, approximate=True)
            await pipe.execute()


async def _raw_publish(env: Env, client: aioredis.Redis) -> float:
    key = unique("raw.rp")
    with Clock() as clock:
        await _raw_fill(client, key, env)
    await client.delete(key)
    return rate(env.messages, clock.seconds)


async def _router_consume(env: Env) -> float:
    service = unique("rc")
    counter = Counter(env.messages)
    # Fill the stream through the router first (untimed), then time the consumer alone.
    async with running_bus(_settings(env, service)) as (bus, _):
        await bus.publish_many([Blob(data="x" * env.size) for _ in range(env.messages)])

    async def handle(_: Message) -> None:
        counter.hit()

    def setup(bus: Bus) -> None:
        bus.subscribe(Blob, handle)

    clock = Clock()
    async with running_bus(_settings(env, service), setup) as (_, brokers):
        with clock:
            await counter.wait()
        redis = brokers.redis
    if redis is not None:
        async with aioredis.from_url(env.redis_url) as client:
            await client.delete(f"{service}.blob")
    return rate(env.messages, clock.seconds)


async def _raw_consume(env: Env, client: aioredis.Redis) -> float:
    key = unique("raw.rc")
    await _raw_fill(client, key, env)
    await client.xgroup_create(key, "g", id="0", mkstream=True)
    done = 0
    with Clock() as clock:
        while done < env.messages:
            reply: Any = await client.xreadgroup("g", "c", {key: ">"}, count=BATCH, block=100)
            for _, entries in reply or []:
                ids = [entry_id for entry_id, _ in entries]
                await client.xack(key, "g", *ids)
                done += len(ids)
    await client.delete(key)
    return rate(env.messages, clock.seconds)


async def rows(env: Env, pick: Callable[[str], bool]) -> list[Row]:
    if not pick("redis"):
        return []
    client = aioredis.from_url(env.redis_url)
    try:
        ours, raw, peer = await rates_with_peer(
            env.runs,
            lambda: _router_publish(env),
            lambda: _raw_publish(env, client),
            faststream.available(lambda: faststream.redis_publish(env, BATCH, MAXLEN)),
        )
        publish = Row(
            "Redis publish, pipelined",
            "msg/s",
            ours,
            raw,
            target=0.8,
            note=(
                f"{env.messages} msgs; publish_many (window {env.window})"
                f" vs XADD pipeline x{BATCH}; FastStream: publish(pipeline=) x{BATCH}"
            ),
            peer=peer,
            peer_target=1.0,
        )
        ours, raw, peer = await rates_with_peer(
            env.runs,
            lambda: _router_consume(env),
            lambda: _raw_consume(env, client),
            faststream.available(lambda: faststream.redis_consume(env, BATCH, MAXLEN)),
        )
        consume = Row(
            "Redis consume + ack",
            "msg/s",
            ours,
            raw,
            target=0.8,
            note=(
                f"{env.messages} msgs; handler vs XREADGROUP count={BATCH} + XACK;"
                f" FastStream: StreamSub(max_records={BATCH})"
            ),
            peer=peer,
            peer_target=1.0,
        )
    finally:
        await client.aclose()
    for row in (publish, consume):
        peer_note = "" if row.peer is None else f" vs FastStream {row.peer:,.0f}"
        print(f"  {row.name}: {row.ours:,.0f} vs {row.raw or 0:,.0f}{peer_note}", flush=True)
    return [publish, consume]
