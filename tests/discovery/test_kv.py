"""KV discovery against a real nats-server: joins, updates, leaves, crashes, bad data, TTL."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

import nats
import nats.js.errors
import pytest
from nats.js.api import KeyValueConfig, StorageType

from app.discovery.models import now
from app.testing import NatsServer, eventually
from app.testing.faults import freeze, thaw
from tests.discovery.conftest import OTHER_SERVICE, TTL


async def test_nodes_see_each_other_and_themselves(start_node):
    a = await start_node()
    b = await start_node(service_name=OTHER_SERVICE)
    await eventually(lambda: a.sees(b.node_id) and b.sees(a.node_id), timeout=1)
    assert {n.node_id for n in a.discovery.nodes()} == {a.node_id, b.node_id}
    assert [n.node_id for n in a.discovery.nodes(OTHER_SERVICE)] == [b.node_id]
    assert await a.discovery.readiness() == {"discovery": "ok"}


async def test_heartbeats_refresh_last_seen_without_update_events(start_node, record):
    a = await start_node()
    b = await start_node()
    await eventually(lambda: a.sees(b.node_id), timeout=1)
    events = record(a)
    first_seen = a.discovery.get(b.node_id).last_seen
    await eventually(
        lambda: a.discovery.get(b.node_id).last_seen > first_seen, timeout=b.discovery.ttl
    )
    await asyncio.sleep(0.1)  # time for a wrong `updated` to reach the recorder
    assert events.kinds(b.node_id) == ["joined"]

    await b.discovery.set_metadata({"draining": "true"})
    await eventually(lambda: events.kinds(b.node_id) == ["joined", "updated"], timeout=1)
    assert a.discovery.get(b.node_id).metadata == {"draining": "true"}


async def test_deregister_is_seen_at_once_as_a_graceful_leave(start_node, record):
    a = await start_node()
    b = await start_node()
    await eventually(lambda: a.sees(b.node_id), timeout=1)
    events = record(a)
    await b.discovery.deregister()
    await eventually(lambda: events.left(b.node_id) == ["graceful"], timeout=1)
    assert not a.sees(b.node_id)
    assert await b.discovery.readiness() == {"discovery": "not_registered"}


async def test_crashed_node_expires_through_limit_markers(start_node, record):
    a = await start_node()
    b = await start_node()
    assert a.discovery.limit_markers
    await eventually(lambda: a.sees(b.node_id), timeout=1)
    events = record(a)
    await b.crash()
    took = await eventually(lambda: events.left(b.node_id) == ["expired"], timeout=TTL + 1)
    assert not a.sees(b.node_id)
    print(f"\ncrash leave via limit markers: {took:.2f}s after the crash (TTL {TTL}s)")


async def test_sweep_drops_a_crashed_node_from_a_bucket_without_markers(
    nats_server: NatsServer, start_node, record, caplog
):
    await bucket_without_markers(nats_server)
    caplog.set_level(logging.INFO, logger="app.discovery")
    a = await start_node()
    b = await start_node()
    assert not a.discovery.limit_markers
    assert "crash detection by local sweep" in caplog.text
    await eventually(lambda: a.sees(b.node_id), timeout=1)
    events = record(a)
    await b.crash()
    await eventually(lambda: events.left(b.node_id) == ["expired"], timeout=TTL + 1)
    assert not a.sees(b.node_id)
    assert a.sees(a.node_id)


async def test_a_frozen_broker_makes_no_node_leave_in_sweep_mode(
    nats_server: NatsServer, start_node, record
):
    """SIGSTOP the broker for longer than the TTL: the connections stay open and nothing is
    heard, from the peers or of our own heartbeat. Silence then says nothing: no leave, and
    no leave once the broker is back either."""
    await bucket_without_markers(nats_server)
    a = await start_node()
    b = await start_node()
    assert not a.discovery.limit_markers
    await eventually(lambda: a.sees(b.node_id), timeout=1)
    events = record(a)
    assert nats_server.pid is not None
    freeze(nats_server.pid)
    await asyncio.sleep(TTL * 2.5)
    thaw(nats_server.pid)
    await asyncio.sleep(TTL * 2)  # heartbeats resume; a late false leave would show by now
    assert events.left(b.node_id) == []
    assert a.sees(b.node_id)


async def test_a_short_broker_restart_makes_no_node_leave_in_sweep_mode(
    nats_server: NatsServer, start_node, record
):
    """The server is down for most of a TTL: the keys are still there afterwards but old.
    They get the same grace as missing ones: nobody leaves."""
    await bucket_without_markers(nats_server)
    a = await start_node()
    b = await start_node()
    assert not a.discovery.limit_markers
    await eventually(lambda: a.sees(b.node_id), timeout=1)
    events = record(a)
    nats_server.stop()
    await asyncio.sleep(TTL * 0.8)
    nats_server.start()
    await asyncio.sleep(TTL * 2)
    assert events.left(b.node_id) == []
    assert a.sees(b.node_id)


async def test_bad_values_in_the_bucket_are_skipped_with_a_warning(start_node, caplog):
    a = await start_node()
    kv = await a.brokers.js.key_value("qosmesh_nodes")
    good = a.discovery.self_info.model_copy(update={"node_id": "other-1", "last_seen": now()})
    future = json.loads(good.to_json()) | {"node_id": "other-2", "schema": 2}
    await kv.put("qosmesh.junk", b"{not json")
    await kv.put("qosmesh.other-2", json.dumps(future).encode())
    await kv.put("qosmesh.elsewhere", good.to_json())
    await kv.put("qosmesh.other-1", good.to_json())

    await eventually(lambda: a.sees("other-1"), timeout=1)
    assert {n.node_id for n in a.discovery.nodes()} == {a.node_id, "other-1"}
    assert "skipping bad value under 'qosmesh.junk': not JSON" in caplog.text
    assert "unknown schema version 2" in caplog.text
    assert "stored under 'qosmesh.elsewhere'" in caplog.text

    late = await start_node()
    assert {n.node_id for n in late.discovery.nodes()} == {a.node_id, late.node_id, "other-1"}


async def test_existing_bucket_ttl_wins_over_a_different_setting(start_node, caplog):
    a = await start_node()
    b = await start_node(node_ttl=30)
    assert "has TTL 2.0s but APP_NODE_TTL is 30.0s" in caplog.text
    assert b.discovery.ttl == TTL
    assert b.discovery.heartbeat_seconds == pytest.approx(TTL / 3)
    status = await (await a.brokers.js.key_value("qosmesh_nodes")).status()
    assert status.ttl == TTL
    assert status.history == 1
    assert status.stream_info.config.storage == StorageType.FILE


@pytest.mark.parametrize("limit_markers", [True, False], ids=["markers", "sweep"])
async def test_after_a_nats_restart_views_are_whole_and_survivors_never_left(
    nats_server: NatsServer, start_node, record, caplog, limit_markers
):
    """The server is down longer than the TTL: survivors re-register, the crashed one is gone."""
    caplog.set_level(logging.INFO, logger="app.discovery")
    a = await start_node(limit_markers=limit_markers)
    b = await start_node(limit_markers=limit_markers)
    c = await start_node(limit_markers=limit_markers)
    assert a.discovery.limit_markers == limit_markers
    await eventually(lambda: len(a.discovery.nodes()) == 3, timeout=1)
    events = record(a)
    await c.crash()
    nats_server.stop()
    await eventually(lambda: not a.brokers.nc.is_connected, timeout=2)
    await asyncio.sleep(TTL + 0.5)
    nats_server.start()

    def whole() -> bool:
        return all(
            {n.node_id for n in x.discovery.nodes()} == {a.node_id, b.node_id} for x in (a, b)
        )

    took = await eventually(whole, timeout=5)
    print(f"\nviews whole again {took:.2f}s after nats-server came back")
    assert "discovery resynced" in caplog.text
    await eventually(lambda: events.left(c.node_id) == ["expired"], timeout=1)
    assert events.kinds(b.node_id) == ["joined"]
    assert events.kinds(a.node_id) == ["joined"]
    kv = await a.brokers.js.key_value("qosmesh_nodes")
    wanted = {a.discovery.self_info.key, b.discovery.self_info.key}

    async def registered_again() -> bool:
        # The views stayed whole through the outage; the keys come back with the next beat.
        with contextlib.suppress(nats.js.errors.NoKeysError):
            return set(await kv.keys()) >= wanted
        return False

    await eventually(registered_again, timeout=3)
    assert await a.discovery.readiness() == {"discovery": "ok"}


async def bucket_without_markers(nats_server: NatsServer) -> None:
    """The discovery bucket as an older server makes it (no limit markers): sweep mode."""
    nc = await nats.connect(nats_server.url)
    await nc.jetstream().create_key_value(
        config=KeyValueConfig(bucket="qosmesh_nodes", ttl=TTL, storage=StorageType.FILE)
    )
    await nc.close()


async def test_a_watch_that_stops_delivering_is_noticed_and_rebuilt(start_node):
    """The watch's consumer is gone and the client never hears of it (what a failed reset of
    nats-py's ordered consumer during a leader election or a lossy link leaves behind): the
    node notices that its own confirmed heartbeats stop coming back through its watch, and
    rebuilds it, well before nats-py's own check (two missed 5 s idle heartbeats) would."""
    a = await start_node()
    js = a.brokers.js
    stream = f"KV_{a.settings.discovery_bucket}"
    for consumer in await js.consumers_info(stream):
        await js.delete_consumer(stream, consumer.name)
    b = await start_node()
    took = await eventually(lambda: a.sees(b.node_id), timeout=3 * TTL, message="a sees b")
    print(f"\nseen after {took:.1f}s")


async def test_a_crashed_node_whose_expiry_marker_never_comes_is_still_dropped(start_node, record):
    """Limit markers tell watchers that a key expired; when one never comes (its message was
    removed another way, or a stream leader changed as it expired), the sweep asks the bucket
    about a node silent for a TTL and drops it: no instance keeps a dead peer forever."""
    a = await start_node()
    b = await start_node()
    await eventually(lambda: a.sees(b.node_id), timeout=1)
    assert a.discovery.limit_markers
    events = record(a)
    key = b.discovery.self_info.key
    await b.crash()
    js = a.brokers.js
    stream = f"KV_{a.settings.discovery_bucket}"
    # Gone, and no marker will say so (a stream purge writes none).
    await js.purge_stream(stream, subject=f"$KV.{a.settings.discovery_bucket}.{key}")
    took = await eventually(lambda: not a.sees(b.node_id), timeout=TTL * 3, message="b dropped")
    assert events.left(b.node_id) == ["expired"]
    print(f"\ndropped after {took:.1f}s")
