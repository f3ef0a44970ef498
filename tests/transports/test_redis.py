"""QoS 1 and 2 on Redis Streams on a real Valkey server (AOF, fsync always), faults injected."""

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.connection import HiredisRespSerializer

from app.errors import PublishError
from app.messages import encode
from app.qos.dead_letters import DeadLetters
from app.settings import Settings
from app.testing import eventually
from app.testing.faults import freeze, thaw
from app.transports.consuming import DELIVERY_MARGIN
from app.transports.redis.consumer import parse_autoclaim
from app.transports.redis.transport import RedisStreamsTransport
from tests.transports.conftest import Charge, Ping, running_bus

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def redis_settings(settings_for, nats_server, redis_server) -> Callable[..., Settings]:
    """Both QoS levels on the test Valkey; quick reclaims, retries and redeliveries."""

    def make(**overrides: object) -> Settings:
        values: dict[str, object] = {
            "nats_url": nats_server.url,
            "redis_url": redis_server.url,
            "qos1_transport": "redis",
            "qos2_transport": "redis",
            "service_name": "svc",
            "max_deliver": 3,
            "redis_claim_idle": 1.0,
            "redis_block_ms": 200,
            "publish_attempt_timeout": 0.5,
            "publish_deadline": 3,
        }
        values.update(overrides)
        return settings_for(**values)  # type: ignore[no-any-return]

    return make


def transport(running) -> RedisStreamsTransport:
    found = running.transports.by_name["redis"]
    assert isinstance(found, RedisStreamsTransport)
    return found


def raw_fields(message, qos=None) -> dict[Any, Any]:
    envelope = encode(message, qos if qos is not None else message.qos, "svc.ping")
    return {**envelope.headers, "$body": envelope.body}


async def pending_count(client: aioredis.Redis, key: str = "svc.ping", group: str = "svc") -> int:
    return int((await client.xpending(key, group))["pending"])


async def _total(store) -> bool:
    return bool((await store.list(1, None)).total)


async def _settled(client) -> bool:
    return await pending_count(client) == 0


@pytest.mark.slow
async def test_publishes_during_a_redis_crash_are_acked_or_raise_and_consuming_resumes(
    redis_settings, redis_server, metrics
):
    """Valkey is SIGKILLed and started again mid-stream: every acked id is in the stream after,
    and the consumer, reconnected, handles every one of them."""
    settings = redis_settings(publish_attempts=8, publish_deadline=8)
    retries = metrics.value("qosmesh.publish.retries", **{"messaging.system": "redis"})
    acked: list[int] = []
    refused: list[int] = []
    done: set[int] = set()

    async def handle(message: Ping) -> None:
        done.add(message.n)

    async with running_bus(settings, lambda bus: bus.subscribe(Ping, handle)) as running:

        async def publish(n: int) -> None:
            try:
                await running.bus.publish(Ping(n=n))
                acked.append(n)
            except PublishError:
                refused.append(n)

        async def crash_soon() -> None:
            await asyncio.sleep(0.3)
            await asyncio.to_thread(redis_server.kill)
            await asyncio.sleep(0.3)
            await asyncio.to_thread(redis_server.start)

        crash = asyncio.create_task(crash_soon())
        for batch in range(30):
            await asyncio.gather(*(publish(batch * 10 + i) for i in range(10)))
            await asyncio.sleep(0.03)
        await crash

        client = running.brokers.redis
        assert client is not None
        entries: Any = await client.xrange("svc.ping")
        stored = {Ping.model_validate_json(fields[b"$body"]).n for _, fields in entries}
        await eventually(lambda: set(acked) <= done, timeout=15)
    retries = metrics.value("qosmesh.publish.retries", **{"messaging.system": "redis"}) - retries
    print(
        f"\n{len(acked)} acked, {len(refused)} refused, {len(stored)} stored, "
        f"{len(done)} handled, {retries:.0f} publish retries"
    )
    assert retries > 0, "the crash did not happen while publishing"
    assert len(acked) + len(refused) == 300
    assert set(acked) <= stored


async def test_replay_brings_a_dead_letter_back_with_its_message_id(redis_settings):
    fixed = asyncio.Event()
    done: list[str] = []

    async def handle(message: Charge) -> None:
        if not fixed.is_set():
            raise RuntimeError("not yet")
        done.append(message.message_id)

    settings = redis_settings(max_deliver=1)
    async with running_bus(settings, lambda bus: bus.subscribe(Charge, handle)) as running:
        charge = Charge(n=3)
        await running.bus.publish(charge)
        store = DeadLetters(running.bus.dead_letters)
        await eventually(lambda: _total(store), timeout=10)
        dlq_id = (await store.list(1, None)).items[0].dlq_id
        detail = await store.get(dlq_id)
        assert detail.message_id == charge.message_id
        assert detail.headers["qm-dlq-error"] == "RuntimeError: not yet"

        fixed.set()
        # QoS 2, inside the publisher's dedupe window: replay must still get through.
        assert await store.replay(dlq_id) == charge.message_id
        await eventually(lambda: done == [charge.message_id], timeout=10)
        assert (await store.list(10, None)).total == 0


async def test_undecodable_entries_are_dead_lettered_at_once_and_consuming_goes_on(
    redis_settings,
):
    done: list[int] = []

    async def handle(message: Ping) -> None:
        done.append(message.n)

    async with running_bus(redis_settings(), lambda bus: bus.subscribe(Ping, handle)) as running:
        client = running.brokers.redis
        assert client is not None
        await client.xadd("svc.ping", {"qm-version": "1", "qm-type": "Ping", "$body": b"\x00junk"})
        await client.xadd("svc.ping", {"no": "headers at all"})
        await running.bus.publish(Ping(n=42))
        store = transport(running).dead_letters
        await eventually(lambda: done == [42], timeout=10)
        await eventually(lambda: _count(store, 2), timeout=10)
        items = (await store.list(10, None)).items
    assert all(item.deliveries == 1 for item in items)
    assert {item.reason for item in items} == {"undecodable", "unknown_version"}


async def _count(store, n: int) -> bool:
    return bool((await store.list(10, None)).total == n)


async def _deliver_to_a_ghost(client: aioredis.Redis, times: int) -> None:
    """Deliver the entry in svc.ping `times` times to a member that never answers (a frozen or
    cut instance), as a broker would: the first read, then claims."""
    await client.xreadgroup("svc", "ghost", {"svc.ping": ">"}, count=1)
    entry = (await client.xpending_range("svc.ping", "svc", "-", "+", 1))[0]["message_id"]
    for _ in range(times - 1):
        await client.xclaim("svc.ping", "svc", "ghost", 0, [entry])


async def test_deliveries_that_reached_no_handler_do_not_spend_the_tries(
    redis_settings, redis_server
):
    """Delivered max_deliver times to a member that never answered: the handler has not failed
    once, so the member that reclaims it runs it, and it is handled, not dead-lettered."""
    calls: list[int] = []
    client = aioredis.from_url(redis_server.url)
    await client.xgroup_create("svc.ping", "svc", id="0", mkstream=True)
    await client.xadd("svc.ping", raw_fields(Ping(n=5)))
    await _deliver_to_a_ghost(client, 2)

    async def handle(message: Ping) -> None:
        calls.append(message.n)

    settings = redis_settings(max_deliver=2, redis_claim_idle=0.3)
    async with running_bus(settings, lambda bus: bus.subscribe(Ping, handle)) as running:
        store = transport(running).dead_letters
        await eventually(lambda: calls == [5], timeout=10)
        await eventually(lambda: _pending_is(client, 0), timeout=10)
        assert (await store.list(1, None)).total == 0
    await client.aclose()


async def _pending_is(client: aioredis.Redis, n: int) -> bool:
    return await pending_count(client) == n


async def test_an_entry_delivered_past_the_margin_with_no_result_is_dead_lettered_unrun(
    redis_settings, redis_server
):
    """Delivered max_deliver + DELIVERY_MARGIN times with no result (it may be what kills the
    members taking it): the member that reclaims it dead-letters it without running it."""
    calls: list[int] = []
    client = aioredis.from_url(redis_server.url)
    await client.xgroup_create("svc.ping", "svc", id="0", mkstream=True)
    await client.xadd("svc.ping", raw_fields(Ping(n=5)))
    await _deliver_to_a_ghost(client, 2 + DELIVERY_MARGIN)

    async def handle(message: Ping) -> None:
        calls.append(message.n)

    settings = redis_settings(max_deliver=2, redis_claim_idle=0.3)
    async with running_bus(settings, lambda bus: bus.subscribe(Ping, handle)) as running:
        store = transport(running).dead_letters
        await eventually(lambda: _total(store), timeout=10)
        item = (await store.list(1, None)).items[0]
        assert await pending_count(client) == 0
    await client.aclose()
    assert calls == []
    assert item.deliveries == 2 + DELIVERY_MARGIN
    assert "delivery limit reached" in item.error


async def test_pending_entries_trimmed_away_are_acked_and_counted_without_looping(
    redis_settings, redis_server, metrics
):
    client = aioredis.from_url(redis_server.url)
    await client.xgroup_create("svc.ping", "svc", id="0", mkstream=True)
    for n in range(20):
        await client.xadd("svc.ping", raw_fields(Ping(n=n)))
    await client.xreadgroup("svc", "ghost", {"svc.ping": ">"}, count=20)
    await client.xtrim("svc.ping", maxlen=0)  # the ghost's 20 entries are gone, still pending
    assert await pending_count(client) == 20

    done: list[int] = []

    async def handle(message: Ping) -> None:
        done.append(message.n)

    before = metrics.value("messaging.client.consumed.messages", outcome="trimmed")
    settings = redis_settings(redis_claim_idle=0.2)
    async with running_bus(settings, lambda bus: bus.subscribe(Ping, handle)) as running:
        await eventually(
            lambda: (
                metrics.value("messaging.client.consumed.messages", outcome="trimmed") - before
                == 20
            ),
            timeout=10,
            message="20 trimmed counted",
        )
        await eventually(lambda: _settled(client), timeout=10, message="pending list empty")
        await running.bus.publish(Ping(n=99))
        await eventually(lambda: done == [99], timeout=5)

        calls = await _xautoclaim_calls(client)
        await asyncio.sleep(1.0)
        sweeps = await _xautoclaim_calls(client) - calls
    await client.aclose()
    assert metrics.value("messaging.client.consumed.messages", outcome="trimmed") - before == 20
    assert sweeps <= 12, f"{sweeps} XAUTOCLAIM calls in 1 s with claim idle 0.2 s"


async def _xautoclaim_calls(client) -> int:
    stats = await client.info("commandstats")
    return int(stats.get("cmdstat_xautoclaim", {}).get("calls", 0))


async def test_a_deleted_group_is_created_again_and_consumption_resumes(redis_settings, caplog):
    done: list[int] = []

    async def handle(message: Ping) -> None:
        done.append(message.n)

    async with running_bus(redis_settings(), lambda bus: bus.subscribe(Ping, handle)) as running:
        client = running.brokers.redis
        assert client is not None
        for n in range(5):
            await running.bus.publish(Ping(n=n))
        await eventually(lambda: sorted(done) == list(range(5)), timeout=5)

        assert await client.xgroup_destroy("svc.ping", "svc")
        for n in range(5, 10):
            await running.bus.publish(Ping(n=n))
        await eventually(lambda: sorted(set(done)) == list(range(10)), timeout=10)
        groups = [g["name"] for g in await client.xinfo_groups("svc.ping")]
        await asyncio.sleep(0.5)
    assert groups == [b"svc"]
    recreated = [r for r in caplog.records if "was missing: created again" in r.getMessage()]
    assert len(recreated) == 1
    assert sorted(done) == list(range(10)), "entries before the deletion came again"


async def test_concurrent_publishes_share_a_few_pipelined_connections(redis_settings, metrics):
    """Far more publishes in flight than the pool's connection cap: all stored, few sockets."""
    before = metrics.value("messaging.client.sent.messages", outcome="ok")
    settings = redis_settings(publish_attempt_timeout=2, publish_deadline=10)
    async with running_bus(settings) as running:
        await asyncio.gather(*(running.bus.publish(Ping(n=n)) for n in range(3000)))
        client, batches = running.brokers.redis, transport(running)._batches
        assert client is not None
        assert batches is not None
        pools = (client.connection_pool, batches.connection_pool)
        sockets = sum(len(p._available_connections) + len(p._in_use_connections) for p in pools)
        entries: Any = await client.xrange("svc.ping")
    # An attempt that times out while its pipeline still lands is sent again (QoS 1 allows it).
    assert {Ping.model_validate_json(fields[b"$body"]).n for _, fields in entries} == set(
        range(3000)
    )
    assert sockets <= 8
    assert metrics.value("messaging.client.sent.messages", outcome="ok") - before == 3000


async def test_a_frozen_redis_fails_publishes_within_the_budget_then_recovers(
    redis_settings, redis_server
):
    """Pipelines have no timeout per reply: the batch deadline alone must bound a hung read."""
    settings = redis_settings(publish_attempts=2, publish_attempt_timeout=0.5, publish_deadline=2)
    async with running_bus(settings) as running:
        await running.bus.publish(Ping(n=0))  # the pipeline connection exists
        freeze(redis_server.pid)
        try:
            started = time.monotonic()
            with pytest.raises(PublishError):
                await running.bus.publish(Ping(n=1))
            elapsed = time.monotonic() - started
        finally:
            thaw(redis_server.pid)
        await running.bus.publish(Ping(n=2))
        entries: Any = await running.brokers.redis.xrange("svc.ping")  # type: ignore[union-attr]
    assert elapsed < 2 + 0.5
    assert {Ping.model_validate_json(f[b"$body"]).n for _, f in entries} >= {0, 2}


@pytest.mark.usefixtures("untraced")
async def test_publish_many_stores_each_message_and_qos2_ones_once(redis_settings, metrics):
    before = metrics.value("messaging.client.sent.messages", outcome="ok", qos=2)
    async with running_bus(redis_settings()) as running:
        await running.bus.publish_many([Ping(n=n) for n in range(1000)], window=100)
        charges = [Charge(n=n) for n in range(300)]
        await running.bus.publish_many(charges, window=100)
        await running.bus.publish_many(charges, window=100)  # a publisher retrying them all
        redis = running.brokers.redis
        assert redis is not None
        pings: Any = await redis.xrange("svc.ping")
        stored: Any = await redis.xrange("svc.charge")
    assert sorted(Ping.model_validate_json(f[b"$body"]).n for _, f in pings) == list(range(1000))
    assert sorted(Charge.model_validate_json(f[b"$body"]).n for _, f in stored) == list(range(300))
    assert metrics.value("messaging.client.sent.messages", outcome="ok", qos=2) - before == 600


@pytest.mark.usefixtures("untraced")
async def test_publish_many_to_a_frozen_redis_gives_up_with_publish_error(
    redis_settings, redis_server
):
    settings = redis_settings(publish_attempts=2, publish_attempt_timeout=0.3, publish_deadline=1)
    async with running_bus(settings) as running:
        await running.bus.publish(Ping(n=0))
        freeze(redis_server.pid)
        try:
            with pytest.raises(PublishError, match="10 of 10 messages not confirmed"):
                await running.bus.publish_many([Ping(n=n) for n in range(1, 11)])
        finally:
            thaw(redis_server.pid)
        await running.bus.publish_many([Ping(n=n) for n in range(11, 21)])


def test_xautoclaim_replies_of_redis_6_and_7_read_the_same():
    seven = [b"0-0", [(b"1-0", {b"a": b"1"})], [b"2-0"]]
    six = [b"0-0", [(b"1-0", {b"a": b"1"}), (b"2-0", {}), (None, None)]]
    for reply in (seven, six):
        cursor, live, deleted = parse_autoclaim(reply)
        assert cursor == b"0-0"
        assert live == [(b"1-0", {b"a": b"1"})]
        assert deleted == [b"2-0"]


@pytest.mark.parametrize(
    "args",
    [
        ("XADD", "svc.ping", "MAXLEN", "~", 100_000, "*", "qm-id", "01JD7Q6W", "$body", b'{"n":1}'),
        ("CONFIG GET", "maxmemory"),
        ("SET", "k\u00e9y", "v\u00e4lue", "PX", 1.5),
        ("XACK", b"svc.ping", "svc", b"1-0", b"2-0"),
    ],
)
def test_commands_are_packed_by_hiredis_into_the_bytes_redis_py_would_send(args):
    """redis-py packs asyncio commands in C from 8.2 on (16 µs in Python for the XADD of a
    message, more than the rest of its publish); fails if that packer goes."""
    client = aioredis.from_url("redis://127.0.0.1:1")
    connection = client.connection_pool.connection_class()
    assert isinstance(connection._command_packer, HiredisRespSerializer)
    packed = connection.pack_command(*args)
    assert b"".join(packed) == b"".join(connection._pack_command_python(*args))


async def test_a_retry_never_takes_an_entry_another_member_now_runs(redis_settings, redis_server):
    """This member fails an entry; before its retry is due another member holds it (it took
    it over while this one was frozen, say) and keeps it alive: the retry leaves it alone,
    and so does the keep-alive. Once the other goes quiet past the claim idle time, the entry
    comes back here through the ordinary reclaim."""
    client = aioredis.from_url(redis_server.url)
    runs: list[float] = []

    async def handle(message: Ping) -> None:
        runs.append(time.monotonic())
        if len(runs) == 1:
            (entry,) = await client.xpending_range("svc.ping", "svc", "-", "+", 1)
            await client.xclaim("svc.ping", "svc", "other", 0, [entry["message_id"]])
            raise ValueError("fails, and meanwhile another member has it")

    settings = redis_settings(redis_claim_idle=1.0)
    async with running_bus(settings, lambda bus: bus.subscribe(Ping, handle)) as running:
        await running.bus.publish(Ping(n=1))
        await eventually(lambda: len(runs) == 1, message="the first run")
        (entry,) = await client.xpending_range("svc.ping", "svc", "-", "+", 1)
        # The other member touches what it runs every claim idle / 3: an entry of its may sit
        # idle for two of those periods, past this member's retry pause.
        await asyncio.sleep(0.6)
        assert len(runs) == 1, "the retry took an entry another member was running"
        for _ in range(9):  # its keep-alive, for 1.8 s more
            await client.xclaim("svc.ping", "svc", "other", 0, [entry["message_id"]], justid=True)
            await asyncio.sleep(0.2)
        assert len(runs) == 1, "the retry took an entry another member was running"
        owner = (await client.xpending_range("svc.ping", "svc", "-", "+", 1))[0]["consumer"]
        assert owner == b"other"
        await eventually(lambda: len(runs) == 2, timeout=10, message="reclaimed once quiet")
    await client.aclose()
