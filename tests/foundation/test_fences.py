"""The fast paths that lean on a library's internals or a server's wire details, one test each.

Each fails loudly, naming the bypass, when what it leans on changes shape; docs/performance.md
lists them with what they save and when to delete them. (redis-py packing commands with hiredis
is checked, bytes and all, in tests/transports/test_redis.py.)
"""

import asyncio
import inspect
import json

import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, StreamConfig
from opentelemetry.sdk.metrics.export import MetricReader

from app.brokers import nats_wire
from app.observability.instruments import LocalHistogramsReader


def _parameters(function: object) -> list[str]:
    return list(inspect.signature(function).parameters)  # type: ignore[arg-type]


async def test_nats_wire_still_finds_the_nats_py_internals_it_queues_frames_with(nats_server):
    """nats_wire.publish queues a framed HPUB with `_send_command` and kicks the flusher
    through `_flush_queue` / `_flush_pending`, as nats-py's own publish does."""
    bypass = "nats_wire.publish (nats-py's _send_command, _flush_queue, _flush_pending)"
    assert nats_wire._INTERNALS, f"{bypass}: gone from nats-py; the fast path is off"
    assert _parameters(NatsClient._send_command)[:3] == ["self", "cmd", "priority"], bypass
    assert _parameters(NatsClient._flush_pending)[:2] == ["self", "force_flush"], bypass
    nc = await nats.connect(nats_server.url)
    try:
        assert isinstance(nc._flush_queue, asyncio.Queue), f"{bypass}: _flush_queue changed"
        assert isinstance(nc._pending, list), f"{bypass}: nats-py no longer buffers in a list"
    finally:
        await nc.close()


def test_the_local_histograms_still_reach_the_sdks_readers_through_receive_metrics():
    """LocalHistogramsReader adds the in-process histograms where MetricReader.collect hands
    what it gathered to `_receive_metrics`."""
    bypass = "LocalHistogramsReader (opentelemetry-sdk's MetricReader._receive_metrics)"
    assert "_receive_metrics" in MetricReader.__abstractmethods__, bypass
    assert _parameters(MetricReader._receive_metrics)[:3] == [
        "self",
        "metrics_data",
        "timeout_millis",
    ], bypass
    assert "_receive_metrics" in inspect.getsource(MetricReader.collect), (
        f"{bypass}: collect no longer calls it"
    )
    assert issubclass(LocalHistogramsReader, MetricReader)


async def test_the_pull_loop_still_reads_the_servers_pull_statuses(nats_server):
    """The JetStream consumer sends its own pull requests and reads how they end from status
    messages: 408 when one expires, with Nats-Pending-Messages saying how many will not come,
    and 409 with 'Consumer Deleted' when its consumer goes."""
    bypass = "the own pull loop (nats-server's 408 and 409 pull statuses)"
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    try:
        await js.add_stream(StreamConfig(name="FENCE", subjects=["fence"]))
        await js.add_consumer("FENCE", ConsumerConfig(durable_name="pull"))
        statuses: asyncio.Queue[Msg] = asyncio.Queue()
        inbox = nc.new_inbox()
        await nc.subscribe(inbox, cb=statuses.put)
        next_subject = "$JS.API.CONSUMER.MSG.NEXT.FENCE.pull"

        await nc.publish(
            next_subject, json.dumps({"batch": 3, "expires": 200_000_000}).encode(), inbox
        )
        expired = await asyncio.wait_for(statuses.get(), 5)
        assert expired.headers is not None, bypass
        assert expired.headers.get("Status") == "408", f"{bypass}: {expired.headers}"
        assert expired.headers.get("Nats-Pending-Messages") == "3", f"{bypass}: {expired.headers}"

        await nc.publish(
            next_subject, json.dumps({"batch": 1, "expires": 5_000_000_000}).encode(), inbox
        )
        await nc.flush()
        await js.delete_consumer("FENCE", "pull")
        deleted = await asyncio.wait_for(statuses.get(), 5)
        assert deleted.headers is not None, bypass
        assert deleted.headers.get("Status") == "409", f"{bypass}: {deleted.headers}"
        assert "deleted" in deleted.headers.get("Description", "").lower(), bypass
    finally:
        await nc.close()


@pytest.mark.parametrize("name", ["_send_command", "_flush_pending"])
def test_the_fast_path_switches_itself_off_when_an_internal_is_missing(monkeypatch, name):
    """A nats-py without one of them is caught at import: the fast path is off and every
    publish goes through nats-py's own `publish` (slower, never wrong)."""
    import importlib

    monkeypatch.delattr(NatsClient, name)
    reloaded = importlib.reload(nats_wire)
    try:
        assert reloaded._INTERNALS is False
    finally:
        monkeypatch.undo()
        importlib.reload(nats_wire)


async def test_replies_still_reach_a_direct_subscription_from_the_read_loop(nats_server):
    """deliver_directly stands in for a subscription's `_pending_queue`, which nats-py's read
    loop fills with `put_nowait`, counting `_pending_size`, for `_wait_for_msgs_task` to empty."""
    bypass = "nats_wire.deliver_directly (nats-py's Subscription._pending_queue)"
    nc = await nats.connect(nats_server.url)
    queued: list[Msg] = []
    delivered: list[bytes] = []

    async def queued_instead(msg: Msg) -> None:
        queued.append(msg)

    try:
        sub = await nc.subscribe("direct.*", cb=queued_instead)
        assert nats_wire.deliver_directly(sub, lambda msg: delivered.append(msg.data)), (
            f"{bypass}: gone from nats-py; replies go through the queue"
        )
        assert "put_nowait" in inspect.getsource(NatsClient._process_msg), bypass
        sub._pending_bytes_limit = 1024  # a backlog this size would be dropped as slow
        for n in range(200):
            await nc.publish(f"direct.{n}", b"x" * 64)
        await nc.flush()
        await asyncio.sleep(0.05)
        assert delivered == [b"x" * 64] * 200, bypass
        assert queued == [], f"{bypass}: the subscription's task still took messages"
        assert sub.pending_msgs == 0
        assert sub._pending_size == 0, f"{bypass}: nats-py's backlog count grows"
        await sub.unsubscribe()
    finally:
        await nc.close()


def test_direct_delivery_switches_itself_off_when_the_subscription_changes_shape():
    class Reshaped:
        pass

    assert nats_wire.deliver_directly(Reshaped(), lambda msg: None) is False  # type: ignore[arg-type]
