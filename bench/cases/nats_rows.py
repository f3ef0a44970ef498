"""NATS rows: QoS 0 core publish, QoS 1 JetStream publish (awaited and many in flight),
QoS 1 and QoS 2 end to end; each beside nats-py doing the same work, and the QoS 0 and QoS 1
rows beside FastStream too."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import nats
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, StorageType, StreamConfig

from app.bus import Bus
from app.messages import Message
from app.transports.jetstream.streams import stream_name
from bench.cases.common import (
    Blob,
    ChargeBlob,
    Clock,
    Counter,
    Env,
    NoticeBlob,
    paired_rates,
    rate,
    rates_with_peer,
    running_bus,
    settings,
    unique,
)
from bench.peers import faststream_messaging as faststream
from bench.report import Row


def _payload(env: Env) -> bytes:
    return b"x" * env.size


async def _raw_stream(js: JetStreamContext, subject: str) -> str:
    name = stream_name(subject)
    await js.add_stream(
        StreamConfig(name=name, subjects=[subject], storage=StorageType.FILE, duplicate_window=120)
    )
    return name


async def _drop_streams(js: JetStreamContext) -> None:
    """Keep the temp store small between runs."""
    for name in await js.streams_info():
        with contextlib.suppress(Exception):
            await js.delete_stream(name.config.name or "")


# -- QoS 0 -----------------------------------------------------------------------------------


async def qos0(env: Env, nc: NatsClient) -> Row:
    async def router() -> float:
        async with running_bus(settings(env, unique("q0"))) as (bus, brokers):
            msgs = [NoticeBlob(data="x" * env.size) for _ in range(env.messages)]
            with Clock() as clock:
                for msg in msgs:
                    await bus.publish(msg)
                await brokers.nc.flush()
        return rate(env.messages, clock.seconds)

    async def raw() -> float:
        payload = _payload(env)
        subject = unique("raw.q0")
        with Clock() as clock:
            for _ in range(env.messages):
                await nc.publish(subject, payload)
            await nc.flush()
        return rate(env.messages, clock.seconds)

    peer = faststream.available(lambda: faststream.core_publish(env))
    ours, raw_rate, peer_rate = await rates_with_peer(env.runs, router, raw, peer)
    return Row(
        "QoS 0 publish (core)",
        "msg/s",
        ours,
        raw_rate,
        target=0.5,
        note=f"{env.messages} msgs + flush",
        peer=peer_rate,
        peer_target=1.0,
    )


# -- QoS 1 publish ---------------------------------------------------------------------------


async def _router_publish(
    env: Env, count: int, window: int | None, nats_url: str | None = None
) -> float:
    config = settings(env, unique("q1"), nats_url=nats_url or env.nats_url)
    async with running_bus(config) as (bus, brokers):
        msgs = [Blob(data="x" * env.size) for _ in range(count)]
        await bus.publish(Blob(data="warm"))  # creates the stream
        with Clock() as clock:
            if window is None:
                for msg in msgs:
                    await bus.publish(msg)
            else:
                await bus.publish_many(msgs, window=window)
        await _drop_streams(brokers.js)
    return rate(count, clock.seconds)


async def _raw_publish(env: Env, nc: NatsClient, count: int, window: int | None) -> float:
    js = nc.jetstream(publish_async_max_pending=window or 1)
    subject = unique("raw.q1")
    await _raw_stream(js, subject)
    payload = _payload(env)
    with Clock() as clock:
        if window is None:
            for _ in range(count):
                await js.publish(subject, payload)
        else:
            futures = [await js.publish_async(subject, payload) for _ in range(count)]
            await js.publish_async_completed()
    if window is not None:
        for future in futures:
            future.result()
    await _drop_streams(js)
    return rate(count, clock.seconds)


async def qos1_awaited(env: Env, nc: NatsClient) -> Row:
    n = env.slow_messages
    ours, raw, peer = await rates_with_peer(
        env.runs,
        lambda: _router_publish(env, n, None),
        lambda: _raw_publish(env, nc, n, None),
        faststream.available(lambda: faststream.jetstream_publish(env, n, None)),
    )
    return Row(
        "QoS 1 publish, awaited one by one",
        "msg/s",
        ours,
        raw,
        note=f"{n} msgs; router vs js.publish",
        peer=peer,
        peer_target=1.0,
    )


async def qos1_inflight(env: Env, nc: NatsClient) -> Row:
    n, w = env.messages, env.window
    ours, raw, peer = await rates_with_peer(
        env.runs,
        lambda: _router_publish(env, n, w),
        lambda: _raw_publish(env, nc, n, w),
        faststream.available(lambda: faststream.jetstream_publish(env, n, w)),
    )
    return Row(
        f"QoS 1 publish, {w} in flight",
        "msg/s",
        ours,
        raw,
        target=0.8,
        note=f"{n} msgs; publish_many vs js.publish_async; FastStream: gather of {w}",
        peer=peer,
        peer_target=1.0,
    )


async def synced(env: Env, window: int | None) -> Row:
    """What `sync_interval: always` (APP_NATS_SYNC's default) costs the router: the same
    publishes against a server that flushes every write and one that flushes every 2 minutes."""
    n = env.slow_messages if window is None else env.messages
    how = "awaited one by one" if window is None else f"{window} in flight"
    return Row(
        f"QoS 1 publish {how}, sync always vs 2m",
        "msg/s",
        *await paired_rates(
            env.runs,
            lambda: _router_publish(env, n, window, env.nats_synced_url),
            lambda: _router_publish(env, n, window),
        ),
        note=f"{n} msgs; qosmesh on both; ratio = what durability on every write keeps",
    )


# -- end to end ------------------------------------------------------------------------------


async def _router_e2e(env: Env, kind: type[Message], count: int) -> float:
    counter = Counter(count)

    async def handle(_: Message) -> None:
        counter.hit()

    def setup(bus: Bus) -> None:
        bus.subscribe(kind, handle)

    async with running_bus(settings(env, unique("e2e")), setup) as (bus, brokers):
        msgs = [kind(data="x" * env.size) for _ in range(count)]  # type: ignore[call-arg]
        with Clock() as clock:
            await bus.publish_many(msgs, window=env.window)
            await counter.wait()
        await _drop_streams(brokers.js)
    return rate(count, clock.seconds)


async def _raw_e2e(env: Env, nc: NatsClient, count: int) -> float:
    js = nc.jetstream(publish_async_max_pending=env.window)
    subject = unique("raw.e2e")
    stream = await _raw_stream(js, subject)
    durable = subject.replace(".", "_")
    config = ConsumerConfig(durable_name=durable, ack_policy=AckPolicy.EXPLICIT, ack_wait=30)
    await js.add_consumer(stream, config)
    psub = await js.pull_subscribe_bind(durable=durable, stream=stream)
    payload = _payload(env)
    counter = Counter(count)

    async def consume() -> None:
        while counter.count < count:
            try:
                batch = await psub.fetch(256, timeout=1.0)
            except nats.errors.TimeoutError:
                continue
            for msg in batch:
                await msg.ack()
            counter.hit(len(batch))

    async def publish() -> None:
        for _ in range(count):
            await js.publish_async(subject, payload)
        await js.publish_async_completed()

    with Clock() as clock:
        await asyncio.gather(publish(), consume())
    await psub.unsubscribe()
    await _drop_streams(js)
    return rate(count, clock.seconds)


async def qos1_e2e(env: Env, nc: NatsClient) -> Row:
    n = env.messages
    ours, raw, peer = await rates_with_peer(
        env.runs,
        lambda: _router_e2e(env, Blob, n),
        lambda: _raw_e2e(env, nc, n),
        faststream.available(lambda: faststream.jetstream_e2e(env, n)),
    )
    return Row(
        "QoS 1 end to end (publish, consume, ack)",
        "msg/s",
        ours,
        raw,
        target=0.7,
        note=f"{n} msgs; handler vs pull fetch(256) + ack; FastStream: PullSub(256)",
        peer=peer,
        peer_target=1.0,
    )


async def qos2_e2e(env: Env) -> Row:
    n = env.slow_messages
    return Row(
        "QoS 2 end to end vs QoS 1 end to end",
        "msg/s",
        *await paired_rates(
            env.runs, lambda: _router_e2e(env, ChargeBlob, n), lambda: _router_e2e(env, Blob, n)
        ),
        note=f"{n} msgs; raw column = router QoS 1; QoS 2 adds a KV claim + done mark",
    )


async def rows(env: Env, pick: Callable[[str], bool]) -> list[Row]:
    nc = await nats.connect(env.nats_url)
    try:
        out: list[Row] = []
        cases: tuple[tuple[str, Callable[[], Awaitable[Row]]], ...] = (
            ("qos0", lambda: qos0(env, nc)),
            ("qos1", lambda: qos1_awaited(env, nc)),
            ("inflight", lambda: qos1_inflight(env, nc)),
            ("e2e", lambda: qos1_e2e(env, nc)),
            ("qos2", lambda: qos2_e2e(env)),
            ("sync", lambda: synced(env, None)),
            ("sync", lambda: synced(env, env.window)),
        )
        for key, case in cases:
            if pick(key):
                row = await case()
                peer = "" if row.peer is None else f" vs FastStream {row.peer:,.0f}"
                print(f"  {row.name}: {row.ours:,.0f} vs {row.raw or 0:,.0f}{peer}", flush=True)
                out.append(row)
        return out
    finally:
        await nc.close()
