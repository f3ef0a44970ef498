"""QoS 2 claims have owners: a delivery whose claim was taken over cannot undo the winner's."""

import asyncio

import nats
import pytest
import redis.asyncio as aioredis

from app.idempotency import (
    ClaimBusy,
    IdempotencyStore,
    KvIdempotencyStore,
    MemoryIdempotencyStore,
    RedisIdempotencyStore,
)

STALE = 0.3


@pytest.fixture(params=["memory", "kv", "redis"])
async def store(request, settings_for, nats_server, redis_server):
    settings = settings_for(nats_url=nats_server.url, service_name="svc")
    if request.param == "memory":
        yield MemoryIdempotencyStore(60)
    elif request.param == "kv":
        nc = await nats.connect(nats_server.url)
        yield await KvIdempotencyStore.open(nc.jetstream(), settings)
        await nc.close()
    else:
        client = aioredis.from_url(redis_server.url)
        yield RedisIdempotencyStore(client, settings)
        await client.aclose()


async def taken_over(store: IdempotencyStore):
    """A claim that went stale, and the claim of the delivery that took it over."""
    loser = await store.claim("m1", stale_after=STALE)
    assert loser is not None
    await asyncio.sleep(STALE + 0.1)
    winner = await store.claim("m1", stale_after=STALE)
    assert winner is not None
    return loser, winner


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
