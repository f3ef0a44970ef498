"""The dead-letter store stays within its bounds whatever arrives, counts what its bounds drop,
lists in batches however many holes discards leave, and keeps a stub's real reason even when
the original's headers fill the server's limit."""

import asyncio
import itertools
import time

import httpx
import pytest
import redis.asyncio as aioredis

from app.brokers.direct_get import read_run
from app.brokers.nats_wire import JETSTREAM_MAX_HEADERS, headers_size
from app.errors import DeadLetterStoreFullError
from app.instance.services import services_of
from app.messages import QoS, encode
from app.qos.dead_letters import Failure
from app.testing import eventually, running_app
from app.transports.jetstream.dead_letters import JetStreamDeadLetters
from tests.transports.conftest import Ping, bus_settings, running_bus
from tests.transports.test_redis import redis_settings

__all__ = ["bus_settings", "redis_settings"]  # the fixtures, shared with the transport tests


async def test_a_full_store_of_policy_new_refuses_and_the_delivery_comes_again_later(
    bus_settings, metrics, caplog
):
    """APP_DLQ_DISCARD=new: the newest dead letter is refused, the delivery is not acked but
    handed back after a growing delay (no storm), and it is stored once there is room."""
    settings = bus_settings(dlq_max_messages=2, dlq_discard="new", max_deliver=1)
    refused_before = metrics.value("qosmesh.dead_letters.dropped", policy="new")

    async def handle(message: Ping) -> None:
        raise ValueError("never handled")

    def refused() -> list[float]:
        return [r.created for r in caplog.records if "dead-letter copy of" in r.getMessage()]

    async with running_bus(settings, lambda bus: bus.subscribe(Ping, handle)) as running:
        store = running.bus.dead_letters[0]
        assert isinstance(store, JetStreamDeadLetters)
        filler = encode(Ping(n=0), QoS.AT_LEAST_ONCE, "svc.ping")
        for seq in (1, 2):
            await store.add(
                filler,
                stream="X",
                seq=seq,
                consumer="c",
                failure=Failure("max_deliveries", "boom"),
                deliveries=1,
            )
        with pytest.raises(DeadLetterStoreFullError):
            await store.add(
                filler, stream="X", seq=3, consumer="c", failure=Failure("x", "y"), deliveries=1
            )
        ping = Ping(n=7)
        await running.bus.publish(ping)
        await eventually(lambda: len(refused()) >= 2, timeout=15)
        await asyncio.sleep(0.5)
        tries = refused()
        await store.delete("js-1")
        await eventually(lambda: _holds(store, ping.message_id, "max_deliveries"), timeout=40)
    gaps = [b - a for a, b in itertools.pairwise(tries)]
    assert len(tries) <= 3, f"handed back at once: {gaps}"
    assert all(gap >= 0.4 for gap in gaps), gaps
    assert metrics.value("qosmesh.dead_letters.dropped", policy="new") - refused_before >= 2


async def _holds(store: JetStreamDeadLetters, message_id: str, reason: str) -> bool:
    page = await store.list(10, None)
    return any(
        i.message_id == message_id and i.reason == reason and "never handled" in i.error
        for i in page.items
    )


async def test_listing_after_discards_reads_in_a_bounded_number_of_requests(
    settings_for, nats_server
):
    """2,000 dead letters of which 1,800 were discarded: a page of 50 and the groups view
    cost a few requests, not one per sequence."""
    settings = settings_for(nats_url=nats_server.url, admin_token="s3cret-admin-token")
    auth = {"Authorization": "Bearer s3cret-admin-token"}
    async with (
        running_app(settings) as (app, url),
        httpx.AsyncClient(base_url=url, headers=auth, timeout=30) as client,
    ):
        store = services_of(app).bus.dead_letters[0]
        assert isinstance(store, JetStreamDeadLetters)
        nc = services_of(app).brokers.nc
        envelope = encode(Ping(n=1), QoS.AT_LEAST_ONCE, "qosmesh.ping")
        for seq in range(1, 2001):
            await store.add(
                envelope,
                stream="QOSMESH_PING",
                seq=seq,
                consumer="qosmesh__ping",
                failure=Failure("max_deliveries", f"boom {seq % 3}", "ValueError"),
                deliveries=5,
            )
        kept = set(range(1, 2001, 10))  # 200 kept, spread over the whole stream
        for seq in range(1, 2001):
            if seq not in kept:
                await store.delete(f"js-{seq}")

        before = nc.stats["out_msgs"]
        started = time.perf_counter()
        page = (await client.get("/admin/dlq", params={"limit": 50})).json()
        listing = time.perf_counter() - started
        listed = nc.stats["out_msgs"] - before

        pages = [page]
        while pages[-1]["next_cursor"]:
            cursor = pages[-1]["next_cursor"]
            pages.append((await client.get("/admin/dlq", params={"cursor": cursor})).json())

        before = nc.stats["out_msgs"]
        groups = (await client.get("/admin/dlq/groups")).json()
        grouped = nc.stats["out_msgs"] - before
    assert [item["dlq_id"] for item in page["items"]] == [
        f"js-{seq}" for seq in sorted(kept, reverse=True)[:50]
    ]
    assert page["total"] == 200
    listed_ids = [item["dlq_id"] for p in pages for item in p["items"]]
    assert listed_ids == [f"js-{seq}" for seq in sorted(kept, reverse=True)]
    assert listed <= 10, listed
    assert groups["scanned"] == 200
    assert groups["complete"]
    assert grouped <= 20, grouped
    print(f"\nfirst page of 50 among 1,800 holes: {listed} requests, {listing * 1000:.0f} ms")


async def test_a_batch_read_skips_a_stored_status_header(bus_settings):
    """A stored message's own `Status` header is not taken for the end of a batch."""
    async with running_bus(bus_settings()) as running:
        js = running.brokers.js
        from nats.js.api import StreamConfig

        await js.add_stream(StreamConfig(name="RAW", subjects=["raw"], allow_direct=True))
        await js.publish("raw", b"a", headers={"Status": "204", "Description": "EOB"})
        await js.publish("raw", b"b")
        found, requests = await read_run(running.brokers.nc, "RAW", 1, 2)
    assert [m.body for m in found] == [b"a", b"b"]
    assert requests == 1


async def test_a_message_with_headers_near_the_limit_keeps_its_reason_in_a_stub(
    bus_settings, metrics
):
    """Headers near JetStream's 64 KiB header limit and an unknown envelope version: the copy
    cannot be whole, the stub is cut to fit and says `unknown_version`, and it is delivered
    once (no redelivery storm of failed copies)."""
    settings = bus_settings()
    handled: list[int] = []

    async def handle(message: Ping) -> None:
        handled.append(message.n)

    async with running_bus(settings, lambda bus: bus.subscribe(Ping, handle)) as running:
        js = running.brokers.js
        good = encode(Ping(n=1), QoS.AT_LEAST_ONCE, "svc.ping")
        base = {**good.headers, "qm-version": "9", "qm-id": "", "qm-type": "", "Nats-Msg-Id": ""}
        each = (JETSTREAM_MAX_HEADERS - headers_size(base) - 40) // 3
        headers = {**base, "qm-id": "i" * each, "qm-type": "t" * each, "Nats-Msg-Id": "m" * each}
        assert JETSTREAM_MAX_HEADERS - 60 < headers_size(headers) < JETSTREAM_MAX_HEADERS
        await js.publish("svc.ping", good.body, headers=headers)
        store = running.bus.dead_letters[0]
        assert isinstance(store, JetStreamDeadLetters)

        async def stored() -> bool:
            return (await store.list(5, None)).total == 1

        await eventually(stored, timeout=15)
        await asyncio.sleep(2)  # room for any redelivery
        item = (await store.list(5, None)).items[0]
        consumer = await js.consumer_info(*_consumer_of(running))
    assert item.reason == "unknown_version"
    assert item.stub
    assert len(item.message_id) <= 256
    assert consumer.num_redelivered == 0
    assert consumer.delivered.consumer_seq == 1


def _consumer_of(running: object) -> tuple[str, str]:
    return "SVC_PING", "svc__ping"


async def test_redis_dead_letters_stay_within_their_bound_and_count_what_it_drops(
    redis_settings, redis_server, metrics
):
    """200 undecodable entries at a bound of 50: the Redis dead-letter stream is trimmed to
    exactly the bound after each copy, and the 150 trimmed are counted."""
    settings = redis_settings(dlq_max_messages=50)
    on_redis = {"messaging.system": "redis", "policy": "old"}
    before = metrics.value("qosmesh.dead_letters.dropped", **on_redis)  # a process-wide sum
    async with running_bus(settings, lambda bus: bus.subscribe(Ping, _ignore)) as running:
        client = aioredis.from_url(redis_server.url)
        try:
            for n in range(200):
                await client.xadd("svc.ping", {"$body": b"\xff %d" % n})

            async def settled() -> bool:
                kept = int(await client.xlen("dlq.svc"))
                dropped = metrics.value("qosmesh.dead_letters.dropped", **on_redis) - before
                return bool(kept + dropped >= 200)

            await eventually(settled, timeout=30)
            length = int(await client.xlen("dlq.svc"))
        finally:
            await client.aclose()
        del running
    assert length == 50
    assert metrics.value("qosmesh.dead_letters.dropped", **on_redis) - before == 150


async def _ignore(message: Ping) -> None:
    return None
