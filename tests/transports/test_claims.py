"""QoS 2 claims have owners: a delivery whose claim was taken over cannot undo the winner's."""

import asyncio
import time

import nats
import pytest
import redis.asyncio as aioredis

from app.brokers.embedded import free_port
from app.errors import StoreUnavailableError
from app.qos.claims import Claim, ClaimBusy, ClaimStore, MemoryClaimStore
from app.testing.faults import freeze, thaw
from app.transports.consuming import HELD
from app.transports.jetstream.claims import KvClaimStore
from app.transports.redis.claims import RedisClaimStore

STALE = 0.3


@pytest.fixture(params=["memory", "kv", "redis"])
async def store(request, settings_for, nats_server, redis_server):
    settings = settings_for(nats_url=nats_server.url, service_name="svc")
    if request.param == "memory":
        yield MemoryClaimStore(60)
    elif request.param == "kv":
        nc = await nats.connect(nats_server.url)
        yield await KvClaimStore.open(nc.jetstream(), settings)
        await nc.close()
    else:
        client = aioredis.from_url(redis_server.url)
        yield RedisClaimStore(client, settings)
        await client.aclose()


async def taken_over(store: ClaimStore):
    """A claim that went stale, and the claim of the delivery that took it over."""
    loser = await store.claim("m1", stale_after=STALE)
    assert loser is not None
    await asyncio.sleep(STALE + 0.1)
    # A KV claim lives at least a whole second (a key's own TTL) and its removal is the
    # server's, on its own schedule: the takeover comes when the server dropped it.
    winner = await eventually_claimed(store, "m1")
    return loser, winner


async def eventually_claimed(store: ClaimStore, key: str) -> Claim:
    deadline = time.monotonic() + 5
    while True:
        try:
            claim = await store.claim(key, stale_after=STALE)
        except ClaimBusy:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
            continue
        assert claim is not None
        return claim


async def test_a_delivery_that_lost_its_claim_cannot_delete_the_winners_done_mark(store):
    loser, winner = await taken_over(store)
    await store.complete(winner)
    await store.release(loser)  # the slow first delivery's handler fails at last
    assert await store.claim("m1", stale_after=STALE) is None  # still applied: never again


async def test_a_delivery_that_lost_its_claim_cannot_release_the_winners_claim(store):
    loser, _ = await taken_over(store)
    await store.release(loser)
    with pytest.raises(ClaimBusy):
        await store.claim("m1", stale_after=STALE)  # the winner is still applying it


async def test_a_late_complete_of_a_lost_claim_still_records_done(store):
    loser, winner = await taken_over(store)
    await store.complete(loser)  # its effect is applied: "done" is the truth
    await store.release(winner)
    assert await store.claim("m1", stale_after=STALE) is None


async def test_a_renewed_claim_does_not_go_stale_and_stays_its_holders(store):
    held = await store.claim("m1", stale_after=STALE)
    for _ in range(3):
        await asyncio.sleep(STALE / 2)
        held = await store.refresh(held)
        assert held is not None
    with pytest.raises(ClaimBusy):
        await store.claim("m1", stale_after=STALE)  # 0.45 s after the claim: renewed, not stale
    await store.complete(held)
    assert await store.claim("m1", stale_after=STALE) is None


async def test_a_claim_taken_over_cannot_be_renewed(store):
    loser, winner = await taken_over(store)
    assert await store.refresh(loser) is None
    assert await store.refresh(winner) is not None


@pytest.fixture(params=["kv", "redis"])
async def unreachable_store(request, settings_for, nats_server):
    """A store whose broker does not answer: the KV bucket's stream is gone (what a client sees
    while its leader is being elected: no responders), or nothing listens on Redis's port."""
    settings = settings_for(nats_url=nats_server.url, service_name="svc")
    if request.param == "kv":
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        store = await KvClaimStore.open(js, settings)
        await js.delete_stream("KV_svc_processed")
        yield store
        await nc.close()
    else:
        client = aioredis.from_url(f"redis://127.0.0.1:{free_port()}")
        yield RedisClaimStore(client, settings)
        await client.aclose()


async def test_a_store_that_does_not_answer_raises_an_error_the_delivery_waits_out(
    unreachable_store,
):
    """Not the broker's own error, which would spend the delivery: a held one, so the
    delivery waits in place for the store instead of ending as a dead letter."""
    with pytest.raises(StoreUnavailableError):
        await unreachable_store.claim("m1", stale_after=STALE)
    assert isinstance(StoreUnavailableError("x"), HELD)


async def test_a_store_operation_retried_counts_as_a_store_retry_not_a_publish(
    settings_for, nats_server, metrics
):
    """The broker freezes under an idempotency mark: the mark rides it out, and its extra
    attempts are store retries of that operation, not publish retries."""
    settings = settings_for(
        nats_url=nats_server.url,
        service_name="svc",
        publish_attempt_timeout=0.3,
        publish_deadline=10,
        publish_attempts=20,
    )
    nc = await nats.connect(nats_server.url)
    try:
        store = await KvClaimStore.open(nc.jetstream(), settings)
        claim = await store.claim("m1", stale_after=STALE)
        assert claim is not None
        store_before = metrics.value("qosmesh.store.retries", operation="idempotency mark")
        publish_before = metrics.value("qosmesh.publish.retries")
        freeze(nats_server.pid)
        try:
            mark = asyncio.create_task(store.complete(claim))
            await asyncio.sleep(1.0)
        finally:
            thaw(nats_server.pid)
        await asyncio.wait_for(mark, 15)
        assert await store.claim("m1", stale_after=STALE) is None
    finally:
        await nc.close()
    assert metrics.value("qosmesh.store.retries", operation="idempotency mark") > store_before
    assert metrics.value("qosmesh.publish.retries") == publish_before


@pytest.mark.parametrize("skew", [60.0, -60.0])
async def test_a_live_claim_stays_busy_and_a_dead_one_lapses_whatever_the_host_clock(
    store, monkeypatch, skew
):
    """Staleness is the store's to judge (a Redis PX, a KV key's own TTL), never a host's wall
    clock: an instance whose clock runs a minute ahead or behind neither takes over a live
    claim nor waits out a dead one."""
    if isinstance(store, MemoryClaimStore):
        pytest.skip("one process: its own monotonic clock")
    live = await store.claim("m-live", stale_after=5.0)
    assert live is not None
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + skew)
    with pytest.raises(ClaimBusy):
        await store.claim("m-live", stale_after=5.0)
    dead = await store.claim("m-dead", stale_after=1.0)
    assert dead is not None
    started = time.monotonic()
    taken = await eventually_claimed(store, "m-dead")
    assert taken.value != dead.value
    assert time.monotonic() - started < 4.0
