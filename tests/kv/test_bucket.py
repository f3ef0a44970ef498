"""`Bucket`'s own get, create and update agree with nats-py's KeyValue on every kind of bucket,
and give up with TimeoutError (which the retries ride through) when the broker does not answer."""

import asyncio
import time
from functools import partial

import nats
import pytest
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import KeyWrongLastSequenceError

from app.brokers.kv import TRANSIENT, Bucket, Entry, open_bucket, retrying_timed
from app.qos.retries import RetryBudget
from app.testing import eventually
from app.testing.faults import freeze, thaw


@pytest.fixture
async def js(nats_server):
    nc = await nats.connect(nats_server.url)
    yield nc, nc.jetstream()
    await nc.close()


async def bucket_of(nc, js, name: str, direct: bool) -> Bucket:
    if not direct:  # as an older release, or another client, made it
        await js.create_key_value(KeyValueConfig(bucket=name, storage=StorageType.FILE))
    bucket = await Bucket.open(nc, js, name, ttl=None, replicas=1)
    assert bucket._direct is direct
    return bucket


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "stream-get"])
async def test_get_create_and_update_agree_with_the_nats_py_bucket(js, direct):
    nc, context = js
    bucket = await bucket_of(nc, context, f"b_{int(direct)}", direct)
    assert await bucket.get("k", 1) is None
    first = await bucket.create("k", b"one", 1)
    assert await bucket.get("k", 1) == Entry(b"one", first)
    with pytest.raises(KeyWrongLastSequenceError):
        await bucket.create("k", b"again", 1)
    second = await bucket.update("k", b"two", first, 1)
    with pytest.raises(KeyWrongLastSequenceError):
        await bucket.update("k", b"stale", first, 1)
    seen = await bucket.kv.get("k")  # nats-py reads what Bucket wrote
    assert (seen.value, seen.revision) == (b"two", second)
    await bucket.kv.put("k", b"three")  # and Bucket reads what nats-py wrote
    assert (await bucket.get("k", 1)).value == b"three"  # type: ignore[union-attr]


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "stream-get"])
async def test_a_deleted_key_reads_as_missing_and_can_be_created_again(js, direct):
    nc, context = js
    bucket = await bucket_of(nc, context, f"d_{int(direct)}", direct)
    await bucket.create("k", b"one", 1)
    await bucket.kv.delete("k")
    assert await bucket.get("k", 1) is None
    revision = await bucket.create("k", b"back", 1)
    assert await bucket.get("k", 1) == Entry(b"back", revision)


async def test_a_new_bucket_reads_by_direct_get(js):
    _, context = js
    await open_bucket(context, "fresh", ttl=None, replicas=1)
    assert (await context.stream_info("KV_fresh")).config.allow_direct


async def test_a_frozen_broker_times_each_operation_out_on_its_own_timeout(js, nats_server):
    nc, context = js
    bucket = await bucket_of(nc, context, "frozen", True)
    revision = await bucket.create("k", b"one", 1)
    freeze(nats_server.pid)
    try:
        for operation in (
            bucket.get("k", 0.3),
            bucket.create("other", b"x", 0.3),
            bucket.update("k", b"two", revision, 0.3),
        ):
            started = time.monotonic()
            with pytest.raises(TRANSIENT) as caught:
                await operation
            assert isinstance(caught.value, TimeoutError)
            assert time.monotonic() - started < 0.3 + 0.2  # a deadline fires up to a tick late
    finally:
        thaw(nats_server.pid)
    # Answers again; a write that timed out may still have been applied, as a publish may.
    entry = await bucket.get("k", 2)
    assert entry is not None
    assert entry.value in (b"one", b"two")


async def restart_after(server, seconds: float) -> None:
    await asyncio.sleep(seconds)
    await asyncio.to_thread(server.start)


async def test_an_operation_during_a_reconnect_rides_it_out_within_the_budget(nats_server):
    """The broker restarts: an operation that meets the connection reconnecting waits for it,
    as long as its attempt lasts, and retries within the budget, instead of failing at once
    (a handler's delivery spent, dead-lettered after a few)."""
    nc = await nats.connect(nats_server.url, reconnect_time_wait=0.1, max_reconnect_attempts=-1)
    try:
        bucket = await Bucket.open(nc, nc.jetstream(), "ride", ttl=None, replicas=1)
        revision = await bucket.create("k", b"one", 1)
        nats_server.kill()
        await eventually(lambda: not nc.is_connected, message="the connection dropped")
        back = asyncio.create_task(restart_after(nats_server, 1.0))
        budget = RetryBudget(attempts=3, attempt_timeout=2.0, deadline=6.0)
        entry = await retrying_timed(partial(bucket.get, "k"), budget, "read")
        assert entry == Entry(b"one", revision)
        await back
    finally:
        await nc.close()
