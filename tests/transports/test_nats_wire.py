"""Headers framed by qosmesh arrive exactly as nats-py would have sent them, and whatever qosmesh
does not frame itself still gets nats-py's checks."""

import nats
import nats.errors
import pytest
from nats.aio.msg import Msg

from app.brokers import nats_wire
from app.errors import MessageTooLargeError

ENVELOPE = {
    "Nats-Msg-Id": "01JD7Q6W0000000000000000AB",
    "qm-version": "1",
    "qm-id": "01JD7Q6W0000000000000000AB",
    "qm-type": "OrderPlaced",
    "qm-qos": "1",
    "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
}


async def _received(nats_url: str, send) -> list[Msg]:
    nc = await nats.connect(nats_url)
    try:
        sub = await nc.subscribe("wire.>")
        await send(nc)
        await nc.flush()
        got = []
        while True:
            try:
                got.append(await sub.next_msg(timeout=0.5))
            except nats.errors.TimeoutError:
                return got
    finally:
        await nc.close()


async def test_framed_publish_arrives_as_nats_py_sends_it(nats_server):
    async def send(nc):
        await nats_wire.publish(nc, "wire.ours", b'{"n":1}', ENVELOPE, reply="wire.reply.7")
        await nc.publish("wire.theirs", b'{"n":1}', reply="wire.reply.7", headers=ENVELOPE)

    ours, theirs = await _received(nats_server.url, send)
    assert ours.headers == theirs.headers == ENVELOPE
    assert (ours.data, ours.reply) == (theirs.data, theirs.reply) == (b'{"n":1}', "wire.reply.7")


def test_headers_with_a_line_break_or_a_bad_name_are_left_to_nats_py():
    assert nats_wire.header_block(ENVELOPE) is not None
    assert nats_wire.header_block({**ENVELOPE, "qm-id": "x\r\nPUB evil 1"}) is None
    assert nats_wire.header_block({"bad name": "1"}) is None
    assert nats_wire.header_block({"": "1"}) is None


async def test_what_is_left_to_nats_py_gets_its_checks(nats_server):
    async def send(nc):
        await nats_wire.publish(nc, "wire.newline", b"", {"qm-id": "a\r\nPUB wire.evil 1"})
        with pytest.raises(nats.errors.BadHeaderError):
            await nats_wire.publish(nc, "wire.bad", b"", {"bad name": "1"})
        with pytest.raises(nats.errors.BadSubjectError):
            await nats_wire.publish(nc, "wire.bad subject", b"", ENVELOPE)
        with pytest.raises(MessageTooLargeError):
            await nats_wire.publish(nc, "wire.big", b"x" * (nc.max_payload + 1), ENVELOPE)
        # The server counts the header block too: it would close the connection on this one.
        with pytest.raises(MessageTooLargeError):
            await nats_wire.publish(nc, "wire.big", b"x" * (nc.max_payload - 10), ENVELOPE)
        assert nc.is_connected

    got = await _received(nats_server.url, send)
    assert [(m.subject, m.headers) for m in got] == [
        ("wire.newline", {"qm-id": "a  PUB wire.evil 1"})
    ]


async def test_a_closed_client_refuses_as_nats_py_does(nats_server):
    nc = await nats.connect(nats_server.url)
    await nc.close()
    with pytest.raises(nats.errors.ConnectionClosedError):
        await nats_wire.publish(nc, "wire.closed", b"", ENVELOPE)


def test_subject_checks_are_remembered_in_a_bounded_lru():
    """Publishes with a new reply subject each (every awaited PubAck) neither grow memory nor
    push out the service's own subjects for long: at most the newest 4,096 answers are kept."""
    check = nats_wire._subject
    assert check.cache_info().maxsize == 4096
    for n in range(5000):
        assert check(f"_INBOX.reply.{n}")
    assert check.cache_info().currsize == 4096
    assert not check("has space")
