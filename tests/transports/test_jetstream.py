"""QoS 1 and 2 on JetStream against a real nats-server, with faults injected."""

import asyncio
import contextlib
import time
from collections import Counter
from pathlib import Path

import nats
import pytest
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy

from app.brokers.embedded import NatsServer
from app.bus import Bus
from app.errors import InvalidMessageError, PublishError
from app.messages import H_ID, Envelope, QoS, encode
from app.testing import eventually
from app.testing.faults import freeze, thaw
from app.transports.jetstream.transport import JetStreamTransport
from tests.transports.conftest import FAST_BUS, Charge, Ping, running_bus

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
async def test_publishes_during_a_broker_restart_are_acked_or_raise(bus_settings, nats_server):
    """No publish is acked and then lost: every acked id is in the stream afterwards."""
    settings = bus_settings(publish_attempts=8, publish_deadline=8)
    acked: list[int] = []
    refused: list[int] = []
    async with running_bus(settings) as running:

        async def publish(n: int) -> None:
            try:
                await running.bus.publish(Ping(n=n))
                acked.append(n)
            except PublishError:
                refused.append(n)

        async def restart_soon() -> None:
            await asyncio.sleep(0.3)
            await asyncio.to_thread(nats_server.restart)

        restart = asyncio.create_task(restart_soon())
        for batch in range(30):
            await asyncio.gather(*(publish(batch * 10 + i) for i in range(10)))
            await asyncio.sleep(0.03)
        await restart

        js = running.brokers.js
        info = await js.stream_info("SVC_PING")
        stored = set()
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await js.get_msg("SVC_PING", seq)
            stored.add(Ping.model_validate_json(msg.data or b"").n)
    print(f"\n{len(acked)} acked, {len(refused)} refused")
    assert len(acked) + len(refused) == 300
    assert set(acked) <= stored


async def _total(store) -> bool:
    return bool((await store.list(1, None)).total)


async def test_replay_brings_a_dead_letter_back_once_the_handler_is_fixed(bus_settings):
    fixed = asyncio.Event()
    done: list[str] = []

    async def handle(message: Ping) -> None:
        if not fixed.is_set():
            raise RuntimeError("not yet")
        done.append(message.message_id)

    async with running_bus(bus_settings(), lambda bus: bus.subscribe(Ping, handle)) as running:
        ping = Ping(n=3)
        await running.bus.publish(ping)
        store = running.transports.by_name["jetstream"].dead_letters
        assert store is not None
        await eventually(lambda: _total(store), timeout=15)
        dlq_id = (await store.list(1, None)).items[0].dlq_id

        fixed.set()
        assert await store.replay(dlq_id) == ping.message_id
        await eventually(lambda: done == [ping.message_id], timeout=10)
        assert (await store.list(10, None)).total == 0


async def test_undecodable_message_is_dead_lettered_at_once_and_consuming_goes_on(bus_settings):
    done: list[int] = []

    async def handle(message: Ping) -> None:
        done.append(message.n)

    async with running_bus(bus_settings(), lambda bus: bus.subscribe(Ping, handle)) as running:
        js = running.brokers.js
        await js.publish("svc.ping", b"\x00garbage", headers={"qm-version": "1", "qm-type": "Ping"})
        await js.publish("svc.ping", b"no headers at all")
        await running.bus.publish(Ping(n=42))
        store = running.transports.by_name["jetstream"].dead_letters
        assert store is not None
        await eventually(lambda: done == [42], timeout=10)
        await eventually(lambda: _count(store, 2), timeout=10)
        items = (await store.list(10, None)).items
    assert all(item.deliveries == 1 for item in items)
    assert {item.reason for item in items} == {"undecodable", "unknown_version"}
    errors = sorted(item.error for item in items)
    assert errors[0].startswith("invalid Ping body: Invalid JSON")
    assert errors[1] == "no qm-version header: not a qosmesh envelope"


async def _count(store, n: int) -> bool:
    return bool((await store.list(10, None)).total == n)


async def test_a_consumer_that_dies_on_the_last_delivery_still_dead_letters(bus_settings):
    """The MAX_DELIVERIES advisory covers a delivery that got no handler result at all."""
    from nats.js.api import AckPolicy, ConsumerConfig

    async with running_bus(bus_settings()) as running:
        js = running.brokers.js
        await running.bus.publish(Ping(n=9))
        await js.add_consumer(
            "SVC_PING",
            ConsumerConfig(
                durable_name="svc__silent",
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=0.5,
                max_deliver=2,
            ),
        )
        silent = await js.pull_subscribe_bind(durable="svc__silent", stream="SVC_PING")
        for _ in range(2):  # take each delivery and never answer, as a crashed consumer would
            await silent.fetch(1, timeout=3)
        # A surviving instance keeps pulling; the server then finds the limit reached.
        with pytest.raises(TimeoutError):
            await silent.fetch(1, timeout=2)
        store = running.transports.by_name["jetstream"].dead_letters
        assert store is not None
        await eventually(lambda: _total(store), timeout=15)
        item = (await store.list(1, None)).items[0]
    assert item.deliveries == 2
    assert "delivery limit reached" in item.error


async def test_deliveries_that_reached_no_handler_do_not_spend_the_tries(bus_settings, nats_server):
    """A message delivered max_deliver times to a consumer that never answered (an instance
    frozen with the deliveries in its buffer): the handler has not failed once, so the next
    delivery runs it, and it is handled, not dead-lettered."""
    got: list[int] = []

    def setup(bus: Bus) -> None:
        async def handle(message: Ping) -> None:
            got.append(message.n)

        bus.subscribe(Ping, handle)

    settings = bus_settings(ack_wait=1)
    async with running_bus(settings, setup):
        pass  # the stream and the durable consumer exist from here
    async with running_bus(settings) as publisher:
        await publisher.bus.publish(Ping(n=7))
    nc = await nats.connect(nats_server.url)
    try:
        frozen = await nc.jetstream().pull_subscribe_bind(durable="svc__ping", stream="SVC_PING")
        for attempt in range(1, settings.max_deliver + 1):
            (msg,) = await frozen.fetch(1, timeout=5)  # never answered
            assert msg.metadata.num_delivered == attempt
    finally:
        await nc.close()
    async with running_bus(settings, setup) as running:
        await eventually(lambda: got == [7], timeout=10)
        store = running.transports.by_name["jetstream"].dead_letters
        assert store is not None
        await asyncio.sleep(settings.ack_wait * 2)
        assert (await store.list(1, None)).total == 0
        info = await running.brokers.js.consumer_info("SVC_PING", "svc__ping")
    assert got == [7]
    assert info.num_ack_pending == 0


async def test_a_draining_consumer_hands_arrivals_back_without_spending_their_tries(bus_settings):
    """While an instance drains, its pull request stays open at the server until it expires,
    and messages keep arriving in it. Each is handed back for after the request's end: handed
    back at once, it came straight back to the same request, around the loop until its
    deliveries ran out and it was dead-lettered unhandled."""
    got: list[int] = []
    release = asyncio.Event()

    def setup(bus: Bus) -> None:
        async def handle(message: Ping) -> None:
            if message.n == 1:
                await release.wait()  # a handler in flight keeps the drain going
            got.append(message.n)

        bus.subscribe(Ping, handle)

    settings = bus_settings()
    async with running_bus(settings, instance="publisher") as publisher:
        async with running_bus(settings, setup) as draining:
            await publisher.bus.publish(Ping(n=1))
            await asyncio.sleep(0.5)  # taken, and its handler waits
            stopping = asyncio.create_task(draining.bus.stop(5))
            await asyncio.sleep(0.1)
            await publisher.bus.publish(Ping(n=2))  # arrives in the open request
            await asyncio.sleep(1)
            release.set()
            await stopping
        assert got == [1]
        async with running_bus(settings, setup, "i2"):
            await eventually(lambda: got == [1, 2], timeout=10)
        store = publisher.transports.by_name["jetstream"].dead_letters
        assert store is not None
        assert (await store.list(1, None)).total == 0
        info = await publisher.brokers.js.consumer_info("SVC_PING", "svc__ping")
    assert info.num_ack_pending == 0
    assert info.num_redelivered <= 1


async def test_qos1_broadcast_reaches_every_instance_and_competing_reaches_one(bus_settings):
    got: dict[str, list[int]] = {"b1": [], "b2": [], "c1": [], "c2": []}

    def setup(instance: str):
        def register(bus: Bus) -> None:
            async def broadcast(message: Ping) -> None:
                got[f"b{instance}"].append(message.n)

            async def compete(message: Ping) -> None:
                got[f"c{instance}"].append(message.n)

            bus.subscribe(Ping, broadcast, broadcast=True)
            bus.subscribe(Ping, compete)

        return register

    settings = bus_settings()
    async with (
        running_bus(settings, setup("1"), "node1") as first,
        running_bus(settings, setup("2"), "node2"),
    ):
        for n in range(40):
            await first.bus.publish(Ping(n=n))
        await eventually(
            lambda: len(got["b1"]) == len(got["b2"]) == 40 and len(got["c1"]) + len(got["c2"]) == 40
        )
    assert sorted(got["b1"]) == sorted(got["b2"]) == list(range(40))
    assert sorted(got["c1"] + got["c2"]) == list(range(40))


# -- the pull consumer -----------------------------------------------------------------------


def _collecting(got: list[int], running: list[int] | None = None, pause: float = 0.0):
    def setup(bus: Bus) -> None:
        async def on_ping(message: Ping) -> None:
            if running is not None:
                running.append(running[-1] + 1 if running else 1)
            await asyncio.sleep(pause)
            if running is not None:
                running.append(running[-1] - 1)
            got.append(message.n)

        bus.subscribe(Ping, on_ping)

    return setup


async def test_consuming_resumes_after_the_broker_restarts(bus_settings, nats_server):
    """Pull requests open at the restart are gone with it; the consumer asks again."""
    got: list[int] = []
    settings = bus_settings(publish_attempts=10, publish_deadline=15)
    async with running_bus(settings, _collecting(got)) as running:
        for n in range(20):
            await running.bus.publish(Ping(n=n))
        await eventually(lambda: len(set(got)) == 20)
        await asyncio.to_thread(nats_server.restart)
        for n in range(20, 40):
            await running.bus.publish(Ping(n=n))
        await eventually(lambda: set(got) == set(range(40)), timeout=15)


async def test_a_deleted_consumer_is_created_again(bus_settings, nats_server):
    got: list[int] = []
    async with running_bus(bus_settings(), _collecting(got)) as running:
        await running.bus.publish(Ping(n=0))
        await eventually(lambda: got == [0])
        await running.brokers.js.delete_consumer("SVC_PING", "svc__ping")
        for n in range(1, 11):
            await running.bus.publish(Ping(n=n))
        await eventually(lambda: set(got) == set(range(11)), timeout=15)


async def test_a_deleted_consumer_resumes_where_it_stopped_not_from_the_start(bus_settings):
    """Created again from the sequence after the last it was given: the 20 handled before the
    deletion do not come again (the stream keeps them for days)."""
    got: list[int] = []
    async with running_bus(bus_settings(), _collecting(got)) as running:
        for n in range(20):
            await running.bus.publish(Ping(n=n))
        await eventually(lambda: len(got) == 20, message="20 handled")
        await running.brokers.js.delete_consumer("SVC_PING", "svc__ping")
        for n in range(20, 25):
            await running.bus.publish(Ping(n=n))
        await eventually(lambda: set(got) == set(range(25)), timeout=15, message="all 25")
        await asyncio.sleep(1)
    assert sorted(got) == list(range(25))


async def test_a_consumer_reported_gone_but_still_there_is_used_as_it_is(bus_settings):
    """A stream electing a new leader answers pull requests with 503, as for a deleted
    consumer. The consumer still exists: consumption goes on with it, unchanged (creating it
    anew with another start policy would be refused, and pulling would stop for good)."""
    got: list[int] = []
    async with running_bus(bus_settings(), _collecting(got)) as running:
        await running.bus.publish(Ping(n=0))
        await eventually(lambda: got == [0], message="the first handled")
        transport = running.transports.by_name["jetstream"]
        assert isinstance(transport, JetStreamTransport)
        (consumer,) = transport._consumers
        consumer._on_status({"Status": "503"})  # what a pull gets during a leader election
        await asyncio.sleep(2.6)  # the pull requests made before it have expired
        for n in range(1, 6):
            await running.bus.publish(Ping(n=n))
        await eventually(lambda: sorted(got) == list(range(6)), timeout=10, message="all 6")
        info = await running.brokers.js.consumer_info("SVC_PING", "svc__ping")
    assert info.config.deliver_policy == DeliverPolicy.ALL


async def test_a_broadcast_consumer_removed_while_idle_resumes_where_it_stopped(bus_settings):
    """The server drops an instance's own broadcast consumer after its inactivity threshold
    (a long disconnect, say): created again, it neither misses what came meanwhile nor
    replays what it had."""
    got: list[int] = []

    def setup(bus: Bus) -> None:
        async def on_ping(message: Ping) -> None:
            got.append(message.n)

        bus.subscribe(Ping, on_ping, broadcast=True)

    async with running_bus(bus_settings(), setup, instance="i7") as running:
        for n in range(5):
            await running.bus.publish(Ping(n=n))
        await eventually(lambda: len(got) == 5, message="5 handled")
        await running.brokers.js.delete_consumer("SVC_PING", "svc__ping__i7")
        for n in range(5, 10):
            await running.bus.publish(Ping(n=n))
        await eventually(lambda: set(got) == set(range(10)), timeout=15, message="all 10")
        await asyncio.sleep(1)
    assert sorted(got) == list(range(10))


async def test_a_gap_left_by_a_deleted_consumer_is_counted_not_skipped_silently(
    bus_settings, metrics
):
    got: list[int] = []
    async with running_bus(bus_settings(), _collecting(got)) as running:
        js = running.brokers.js
        for n in range(5):
            await running.bus.publish(Ping(n=n))
        await eventually(lambda: len(got) == 5, message="5 handled")
        config = (await js.stream_info("SVC_PING")).config
        config.max_msgs = 3
        await js.update_stream(config)
        await js.delete_consumer("SVC_PING", "svc__ping")
        for n in range(5, 15):  # sequences 6-15; the stream keeps 13-15
            await running.bus.publish(Ping(n=n))
        await eventually(lambda: set(got) >= {12, 13, 14}, timeout=15, message="the kept 3")
    assert sorted(got) == [0, 1, 2, 3, 4, 12, 13, 14]
    assert metrics.value("qosmesh.consumer.gap", consumer="svc__ping") == 7


# -- many at once ----------------------------------------------------------------------------


async def _stored(js, stream: str) -> list[int]:
    info = await js.stream_info(stream)
    found = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await js.get_msg(stream, seq)
        found.append(Ping.model_validate_json(msg.data or b"").n)
    return found


@pytest.mark.usefixtures("untraced")
async def test_publish_many_stores_every_message_once(bus_settings, metrics):
    before = metrics.value("messaging.client.sent.messages", outcome="ok", qos=1)
    async with running_bus(bus_settings()) as running:
        await running.bus.publish_many([Ping(n=n) for n in range(2000)], window=64)
        stored = await _stored(running.brokers.js, "SVC_PING")
    assert sorted(stored) == list(range(2000))
    assert metrics.value("messaging.client.sent.messages", outcome="ok", qos=1) - before == 2000


@pytest.mark.slow
@pytest.mark.usefixtures("untraced")
async def test_publish_many_across_a_broker_restart_confirms_every_message(
    bus_settings, nats_server
):
    """Batches keep going while the server restarts: first attempts lost with it are sent
    again under the same Nats-Msg-Id; every message returned as confirmed is stored, once."""
    settings = bus_settings(publish_attempts=10, publish_deadline=15)
    async with running_bus(settings) as running:
        await running.bus.publish(Ping(n=-1))  # the stream exists before the restart
        restart = asyncio.create_task(asyncio.to_thread(nats_server.restart))
        sent, after, longest = 0, 0, 0.0
        while after < 3:
            started = time.monotonic()
            await running.bus.publish_many([Ping(n=n) for n in range(sent, sent + 100)])
            longest = max(longest, time.monotonic() - started)
            sent += 100
            after += restart.done()
        await restart
        stored = await _stored(running.brokers.js, "SVC_PING")
        reconnects = running.brokers.nc.stats["reconnects"]
    print(f"\n{sent} sent, the longest batch took {longest:.2f} s")
    assert reconnects >= 1
    assert longest > 0.2, "no batch waited for the server to come back"
    assert set(range(sent)) <= set(stored)
    assert len(stored) == len(set(stored))  # retries of a stored message were dropped as dups


@pytest.mark.usefixtures("untraced")
async def test_publish_many_with_nothing_to_confirm_gives_up_with_publish_error(
    bus_settings, nats_server
):
    settings = bus_settings(publish_attempts=2, publish_attempt_timeout=0.3, publish_deadline=1)
    async with running_bus(settings) as running:
        await running.bus.publish(Ping(n=0))
        nats_server.kill()
        try:
            with pytest.raises(PublishError, match="of 20 messages not confirmed"):
                await running.bus.publish_many([Ping(n=n) for n in range(20)])
        finally:
            nats_server.start()


async def test_an_existing_streams_replicas_and_duplicate_window_are_not_overwritten(
    bus_settings, caplog
):
    """Another service (or the previous version) made the stream with a 60 s window: a start
    with another window logs the difference and leaves the stream alone."""
    async with running_bus(bus_settings(duplicate_window=60)) as first:
        await first.bus.publish(Ping(n=1))
    async with running_bus(bus_settings(duplicate_window=300)) as second:
        await second.bus.publish(Ping(n=2))
        info = await second.brokers.js.stream_info("SVC_PING")
    assert info.config.duplicate_window == 60
    assert "duplicate_window 60" in caplog.text
    assert info.state.messages == 2


@pytest.mark.usefixtures("untraced")
async def test_publish_many_makes_exactly_the_configured_attempts(
    bus_settings, nats_server, metrics
):
    """The batch's first attempt counts: 3 attempts in all, not 1 + 3. Every attempt is a
    message on the subject, so a plain subscriber counts them; the stream refuses them all.
    The retries the client counted are checked too."""
    # The attempts, not the deadline, must be what ends them: a deadline far out of reach.
    settings = bus_settings(publish_attempts=3, publish_attempt_timeout=0.3, publish_deadline=120)
    async with running_bus(settings) as running:
        await running.bus.publish(Ping(n=0))  # the stream exists
        js = running.brokers.js
        config = (await js.stream_info("SVC_PING")).config
        config.max_msg_size = 16  # every publish now gets an error PubAck
        await js.update_stream(config)
        seen: list[bytes] = []
        watcher = await nats.connect(nats_server.url)

        async def note(msg: Msg) -> None:
            seen.append(msg.data)

        await watcher.subscribe("svc.ping", cb=note)
        await watcher.flush()
        retries = metrics.value("qosmesh.publish.retries", **{"messaging.system": "nats"})
        written = running.brokers.nc.stats["out_msgs"]
        with pytest.raises(PublishError, match="10 of 10") as refused:
            await running.bus.publish_many([Ping(n=n) for n in range(1, 11)])
        await _settled_count(seen, expected=30)
        written = running.brokers.nc.stats["out_msgs"] - written
        received = watcher.stats["in_msgs"]
        await watcher.close()
    after = metrics.value("qosmesh.publish.retries", **{"messaging.system": "nats"})
    assert after - retries == 20  # 2 per message: the batch's attempt was the first
    per_message = Counter(Ping.model_validate_json(data).n for data in seen)
    assert per_message == dict.fromkeys(range(1, 11), 3), (
        f"{per_message}; the bus wrote {written} messages, the watcher read {received}\n"
        f"{refused.value}\nnats-server: {nats_server.log_tail(20)}"
    )


async def _settled_count(
    seen: list[bytes], expected: int, quiet: float = 1.0, limit: float = 15.0
) -> None:
    """Wait until `expected` have arrived, then until nothing more has for `quiet` seconds
    (or until `limit` passed): a starved loop can read the last attempts after a quiet second."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        count = len(seen)
        await asyncio.sleep(quiet if count >= expected else 0.05)
        if count >= expected and len(seen) == count:
            return


async def test_a_cancelled_publish_many_leaves_no_ack_waiting(bus_settings, nats_server, untraced):
    # The attempts outlast the wait below: all 50 stay awaited until the cancel, however late
    # a starved event loop gets to look (with 5 s they could time out before it did).
    async with running_bus(bus_settings(publish_attempt_timeout=60)) as running:
        await running.bus.publish(Ping(n=0))
        transport = running.transports.by_name["jetstream"]
        assert isinstance(transport, JetStreamTransport)
        freeze(nats_server.pid)  # acks stop coming
        try:
            batch = asyncio.create_task(running.bus.publish_many([Ping(n=n) for n in range(50)]))

            def all_awaited() -> bool:
                if batch.done():  # it cannot end while the server is stopped: say how it did
                    raise AssertionError(f"publish_many ended: {batch!r}")
                return transport._acks.waiting >= 50

            await eventually(all_awaited, message="50 acks awaited")
            batch.cancel()
            await asyncio.wait({batch})
        finally:
            thaw(nats_server.pid)
        assert transport._acks.waiting == 0


async def test_a_qos2_message_without_its_message_id_is_refused_at_publish(bus_settings):
    async with running_bus(bus_settings()) as running:
        envelope = encode(Charge(n=1), QoS.EXACTLY_ONCE, "svc.charge")
        headers = {k: v for k, v in envelope.headers.items() if k != H_ID}
        anonymous = Envelope(headers=headers, body=envelope.body, subject="svc.charge")
        with pytest.raises(InvalidMessageError, match="message id"):
            await running.transports.by_name["jetstream"].publish(anonymous, QoS.EXACTLY_ONCE)


async def test_a_qos2_delivery_waits_out_its_idempotency_store_instead_of_dead_lettering(
    bus_settings,
):
    """The KV bucket of QoS 2 claims stops answering (its stream leader is being elected:
    no responders) for longer than all the deliveries' backoffs: the delivery waits for it
    in place, then applies the message once. No delivery is spent, nothing is dead-lettered."""
    applied: list[int] = []

    async def charge(message: Charge) -> None:
        applied.append(message.n)

    settings = bus_settings(max_deliver=2)
    async with running_bus(settings, lambda bus: bus.subscribe(Charge, charge)) as running:
        js = running.brokers.js
        config = (await js.stream_info("KV_svc_processed")).config
        await js.delete_stream("KV_svc_processed")
        await running.bus.publish(Charge(n=1))
        await asyncio.sleep(3)  # a retried delivery would have spent both by now
        assert applied == []
        await js.add_stream(config)
        await eventually(lambda: applied == [1], timeout=10, message="applied once")
        store = running.transports.by_name["jetstream"].dead_letters
        assert store is not None
        assert (await store.list(10, None)).total == 0
        await asyncio.sleep(1)
    assert applied == [1]


async def test_a_consumer_on_v2_ack_subjects_resumes_at_the_right_sequence(settings_for, tmp_path):
    """nats-server with `js_ack_fc_v2` sends 11-token ack subjects: the stream sequence a
    re-created consumer resumes from is read off them too, so nothing is skipped or repeated."""
    server = NatsServer(tmp_path / "nats-v2", config="feature_flags {\n  js_ack_fc_v2: true\n}")
    server.start()
    try:
        settings = settings_for(nats_url=server.url, **FAST_BUS)
        got: list[int] = []
        seen_replies: list[str] = []

        def setup(bus: Bus) -> None:
            async def on_ping(message: Ping) -> None:
                got.append(message.n)

            bus.subscribe(Ping, on_ping, broadcast=True)

        async with running_bus(settings, setup, instance="i9") as running:
            probe = await running.brokers.nc.subscribe("$JS.ACK.>")
            for n in range(5):
                await running.bus.publish(Ping(n=n))
            await eventually(lambda: len(got) == 5, message="5 handled")
            with contextlib.suppress(Exception):
                seen_replies.append((await probe.next_msg(timeout=2)).subject)
            await probe.unsubscribe()
            await running.brokers.js.delete_consumer("SVC_PING", "svc__ping__i9")
            for n in range(5, 10):
                await running.bus.publish(Ping(n=n))
            await eventually(lambda: set(got) == set(range(10)), timeout=15, message="all 10")
            await asyncio.sleep(1)
    finally:
        server.stop()
    assert sorted(got) == list(range(10))
    assert seen_replies
    assert all(len(subject.split(".")) >= 11 for subject in seen_replies), seen_replies
