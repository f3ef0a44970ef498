"""Messages on the wire that are oversized, undecodable, of an unknown type or version go to
the dead-letter stream at once with their reason, are counted, and the consumer goes on."""

import asyncio
import socket
from typing import Any

import nats
import pytest
import redis.asyncio as aioredis

from app.errors import MessageTooLargeError, NotReplayableError, PublishError
from app.messages import Envelope, Message, QoS, encode
from app.qos.dead_letters import DeadLetterStore
from app.testing import eventually
from app.transports.jetstream.streams import stream_name
from tests.transports.conftest import Ping, Running, bus_settings, running_bus
from tests.transports.test_redis import raw_fields, redis_settings

__all__ = ["bus_settings", "redis_settings"]  # the fixture, shared with the transport tests


async def test_hostile_messages_are_dead_lettered_with_their_reason(bus_settings, metrics):
    handled: list[int] = []

    async def handle(message: Ping) -> None:
        handled.append(message.n)

    settings = bus_settings(max_message_bytes=2048)
    async with running_bus(settings, lambda bus: bus.subscribe(Ping, handle)) as running:
        js = running.brokers.js
        good = encode(Ping(n=1), QoS.AT_LEAST_ONCE, "svc.ping")
        hostile = [
            (good.headers, b'{"n": 1, "pad": "' + b"x" * 4096 + b'"}'),  # oversized
            ({**good.headers, "qm-type": "Nope"}, good.body),  # unknown type
            ({**good.headers, "qm-version": "2"}, good.body),  # unknown envelope version
            ({**good.headers, "qm-schema": "99"}, good.body),  # newer schema
            (good.headers, b"\xff\xfe\x00"),  # not JSON
            ({}, b"no envelope at all"),
        ]
        for headers, body in hostile:
            await js.publish("svc.ping", body, headers=headers)
        await running.bus.publish(Ping(n=2))
        store = running.transports.by_name["jetstream"].dead_letters
        assert store is not None

        async def all_dead() -> bool:
            return (await store.list(20, None)).total == len(hostile)

        await eventually(lambda: handled == [2], timeout=10)
        await eventually(all_dead, timeout=10)
        items = (await store.list(20, None)).items
    reasons = sorted(item.reason for item in items)
    assert reasons == sorted(
        [
            "oversized",
            "unknown_type",
            "unknown_version",
            "unknown_version",
            "undecodable",
            "unknown_version",
        ]
    )
    # Unreadable: dead at once. A newer schema is handed back for the instances of the new
    # version (a rolling deploy) and dead only on its last delivery.
    newer = [item for item in items if "schema" in item.error]
    assert [item.deliveries for item in newer] == [settings.max_deliver]
    assert all(item.deliveries == 1 for item in items if item not in newer)
    assert metrics.value("qosmesh.dead_letters", reason="oversized") >= 1


async def test_a_near_limit_message_becomes_a_stub_dead_letter_and_the_connection_stays(
    bus_settings, nats_server
):
    """An undecodable body of max_payload - 100 bytes: its dead-letter copy with headers would
    not fit, and sending it anyway made the server close the connection for good."""
    handled: list[int] = []

    async def handle(message: Ping) -> None:
        handled.append(message.n)

    async with running_bus(bus_settings(), lambda bus: bus.subscribe(Ping, handle)) as running:
        nc = running.brokers.nc
        producer = await nats.connect(nats_server.url)
        body = b"\xff" * (producer.max_payload - 100)
        await producer.jetstream().publish("svc.ping", body, headers={"Nats-Msg-Id": "big-1"})
        await producer.close()
        store = dead_letter_store(running)
        await eventually(lambda: has_dead_letters(store, 1), message="the stub dead letter")
        await running.bus.publish(Ping(n=1))
        await eventually(lambda: handled == [1], message="the next message handled")
        assert nc.is_connected
        (item,) = (await store.list(10, None)).items
        assert item.stub
        assert item.reason == "unknown_version"  # it has no envelope headers at all
        detail = await store.get(item.dlq_id)
        assert detail.headers["qm-dlq-size"] == str(12 + len("Nats-Msg-Id: big-1\r\n") + len(body))
        assert detail.headers["qm-orig-msg-id"] == "big-1"
        assert len(detail.body.encode("utf-8", errors="replace")) <= 3 * 1024
        with pytest.raises(NotReplayableError, match="stub"):
            await store.replay(item.dlq_id)


async def test_dead_letter_copies_carry_no_broker_control_headers(bus_settings, nats_server):
    """`Nats-Expected-Stream: <its own stream>` made the dead-letter stream refuse the copy."""
    async with running_bus(bus_settings(), lambda bus: bus.subscribe(Ping, _ignore)) as running:
        js = running.brokers.js
        stream = stream_name("svc.ping")
        headers = {
            "Nats-Expected-Stream": stream,
            "Nats-Msg-Id": "hostile-1",
            "Nats-Not-A-Real-Control-Header": "x",
            "qm-dlq-stub": "true",
        }
        await js.publish("svc.ping", b"not json", headers=headers)
        store = dead_letter_store(running)
        await eventually(lambda: has_dead_letters(store, 1), message="the dead letter")
        (item,) = (await store.list(10, None)).items
        detail = await store.get(item.dlq_id)
    assert not item.stub
    assert detail.headers["qm-orig-msg-id"] == "hostile-1"
    copied = {name for name in detail.headers if name.lower().startswith("nats-")}
    assert copied == {"Nats-Msg-Id"}  # the dead-letter stream's own dedupe id
    assert detail.headers["Nats-Msg-Id"].startswith(f"dlq-{stream}-")


async def test_a_message_over_the_limit_is_refused_before_it_reaches_the_wire(bus_settings):
    """Headers count: 10,000 of them push a small body over max_payload."""
    async with running_bus(bus_settings()) as running:
        nc = running.brokers.nc
        envelope = encode(Ping(n=1), QoS.AT_LEAST_ONCE, "svc.ping")
        crowded = {**envelope.headers, **{f"x-h{i}": "v" * 100 for i in range(10_000)}}
        big = Envelope(headers=crowded, body=envelope.body, subject="svc.ping")
        for name, qos in (("jetstream", QoS.AT_LEAST_ONCE), ("nats", QoS.AT_MOST_ONCE)):
            with pytest.raises(MessageTooLargeError, match="exceed the broker's limit"):
                await running.transports.by_name[name].publish(big, qos)
        headed = {**envelope.headers, **{f"x-h{i}": str(i) for i in range(5_000)}}  # 70 KiB
        with pytest.raises(MessageTooLargeError, match="headers exceed the stream's limit"):
            await running.transports.by_name["jetstream"].publish(
                Envelope(headers=headed, body=envelope.body, subject="svc.ping"),
                QoS.AT_LEAST_ONCE,
            )
        with pytest.raises(PublishError, match="1 of 2"):
            await running.bus.publish_many([Ping(n=2), BigPing(pad="x" * nc.max_payload)])
        assert nc.is_connected
        await running.bus.publish(Ping(n=3))
        stored = await running.brokers.js.stream_info(stream_name("svc.ping"))
        assert stored.state.messages == 2  # Ping 2 and 3; the crowded Ping 1 never went out


class BigPing(Message):
    pad: str


async def _ignore(message: Ping) -> None:
    return None


def dead_letter_store(running: Running) -> DeadLetterStore:
    store = running.transports.by_name["jetstream"].dead_letters
    assert store is not None
    return store


async def has_dead_letters(store: DeadLetterStore, count: int) -> bool:
    return (await store.list(20, None)).total >= count


async def test_a_copy_over_the_streams_size_bound_is_kept_as_a_stub_with_its_reason(
    bus_settings,
):
    """The dead-letter stream's own size bound refuses the whole copy: a stub is kept at once,
    with the handler's reason and error."""

    async def fail(message: BigPing) -> None:
        raise ValueError("handler refuses")

    settings = bus_settings(max_deliver=2)
    async with running_bus(settings, lambda bus: bus.subscribe(BigPing, fail)) as running:
        store = dead_letter_store(running)
        js = running.brokers.js
        dlq = (await js.stream_info("SVC_DLQ")).config
        dlq.max_msg_size = 4096
        await js.update_stream(dlq)
        await running.bus.publish(BigPing(pad="x" * 8192))
        await eventually(lambda: has_dead_letters(store, 1), timeout=20, message="a stub")
        (item,) = (await store.list(10, None)).items
        assert item.stub
        assert item.reason == "max_deliveries"
        assert "handler refuses" in item.error
        await running.bus.publish(BigPing(pad="small"))
        await eventually(lambda: has_dead_letters(store, 2), timeout=20, message="next one")
        page = (await store.list(10, None)).items
    assert [i.stub for i in page] == [False, True]
    assert page[1].message_id == item.message_id != ""


def raw_frames(server_url: str, subject: str, frames: list[tuple[bytes, bytes]]) -> None:
    """Publish header blocks exactly as given, past every client-side check, on a bare socket."""
    host, port = server_url.removeprefix("nats://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.recv(4096)  # INFO
        sock.sendall(b'CONNECT {"verbose":false,"pedantic":false,"headers":true,"protocol":1}\r\n')
        for block, body in frames:
            head = f"HPUB {subject} {len(block)} {len(block) + len(body)}\r\n".encode()
            sock.sendall(head + block + body + b"\r\n")
        sock.sendall(b"PING\r\n")
        answer = b""
        while b"PONG" not in answer and b"-ERR" not in answer:
            answer += sock.recv(4096)
        assert b"-ERR" not in answer, answer


async def test_hostile_header_blocks_are_dead_lettered_or_handled_and_the_consumer_goes_on(
    bus_settings, nats_server
):
    """Header blocks no client would build: each message ends handled or dead-lettered (never
    lost, never looping), the connection stays, and the next message is handled."""
    handled: list[int] = []

    async def handle(message: Ping) -> None:
        handled.append(message.n)

    good = encode(Ping(n=1), QoS.AT_LEAST_ONCE, "svc.ping")
    envelope = "".join(f"{k}: {v}\r\n" for k, v in good.headers.items())
    many = "".join(f"x-h{i}: {i}\r\n" for i in range(3_000))  # 40 KiB of headers
    frames = [
        (f"NATS/1.0\r\nBad Name: x\r\n{envelope}\r\n".encode(), good.body),
        (f"NATS/1.0\r\nno-colon-at-all\r\n{envelope}\r\n".encode(), good.body),
        (f"NATS/1.0\r\n{many}{envelope}\r\n".encode(), good.body),
        (f"NATS/1.0\r\n{many}\r\n".encode(), b"\xff" * 1000),
        (b"NATS/1.0\r\nx-bin: " + b"\xff\xfe\r\n" + f"{envelope}\r\n".encode(), b"{"),
        (f"NATS/1.0\r\nx-cr: a\rb\r\n{envelope}\r\n".encode(), good.body),
        (f"NATS/1.0\r\n{envelope}qm-schema: 999\r\n\r\n".encode(), good.body),
        (f"NATS/1.0\r\n{many * 4}\r\n".encode(), good.body),  # 10,000+ headers
    ]
    async with running_bus(bus_settings(), lambda bus: bus.subscribe(Ping, handle)) as running:
        store = dead_letter_store(running)
        await asyncio.to_thread(raw_frames, nats_server.url, "svc.ping", frames)
        await running.bus.publish(Ping(n=2))
        await eventually(lambda: 2 in handled, message="the message after the hostile ones")

        async def settled() -> bool:
            info = await running.brokers.js.consumer_info("SVC_PING", "svc__ping")
            return bool(info.num_ack_pending == 0 and info.num_pending == 0)

        await eventually(settled, timeout=15, message="every hostile message settled")
        dead = (await store.list(50, None)).total
        stored = (await running.brokers.js.stream_info("SVC_PING")).state.messages - 1
        assert running.brokers.nc.is_connected
    # JetStream does not store a header block over 64 KiB: the last crowded frame never arrives.
    assert stored == len(frames) - 1
    assert len([n for n in handled if n == 1]) + dead == stored


async def test_hostile_redis_entries_are_dead_lettered_or_handled_and_the_consumer_goes_on(
    redis_settings, redis_server
):
    """Stream entries no publisher of ours writes: every one ends handled or dead-lettered,
    the pending list empties, and the next message is handled."""
    handled: list[int] = []

    async def handle(message: Ping) -> None:
        handled.append(message.n)

    good = raw_fields(Ping(n=1))
    entries: list[dict[Any, Any]] = [
        {k: v for k, v in good.items() if k != "$body"},  # no body
        {"only": "junk"},  # no envelope
        {**good, **{f"x-h{i}": str(i) for i in range(10_000)}},  # 10,000 fields
        {**good, "x-crlf": "a\r\nNats-Expected-Stream: X", b"\xff\xfe": b"\x00"},  # odd fields
        {**good, "Nats-Expected-Stream": "SVC_PING", "qm-dlq-stub": "true"},  # control headers
        {**good, "qm-schema": "999"},  # a schema from the future
        {**good, "$body": b"\xff" * 60_000},  # near APP_MAX_MESSAGE_BYTES, undecodable
        {**good, "$body": b"x" * 70_000},  # over it
    ]
    settings = redis_settings(max_message_bytes=65_536)
    async with running_bus(settings, lambda bus: bus.subscribe(Ping, handle)) as running:
        client = aioredis.from_url(redis_server.url)
        try:
            for fields in entries:
                await client.xadd("svc.ping", fields)
            await running.bus.publish(Ping(n=2))
            await eventually(lambda: 2 in handled, message="the message after the hostile ones")

            async def settled() -> bool:
                return int((await client.xpending("svc.ping", "svc"))["pending"]) == 0

            await eventually(settled, timeout=15, message="every hostile entry settled")
            store = running.transports.by_name["redis"].dead_letters
            assert store is not None
            page = await store.list(50, None)
        finally:
            await client.aclose()
    assert handled.count(1) + page.total == len(entries)
    reasons = {item.reason for item in page.items}
    assert reasons <= {"undecodable", "unknown_version", "oversized"}
    assert "oversized" in reasons
