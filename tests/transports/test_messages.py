"""Message contracts and the wire envelope."""

from typing import ClassVar

import pytest

from app.messages import (
    DecodeError,
    Envelope,
    Event,
    Message,
    QoS,
    ReliableEvent,
    UnknownVersionError,
    decode_message,
    encode,
    new_message_id,
)
from tests.transports.conftest import Charge, Notice, Ping


def test_each_type_declares_its_qos():
    class Shipped(ReliableEvent):
        pass

    assert Ping.qos is QoS.AT_LEAST_ONCE
    assert Notice.qos is QoS.AT_MOST_ONCE
    assert Shipped.qos is QoS.AT_LEAST_ONCE
    assert Charge.qos is QoS.EXACTLY_ONCE
    assert Message.qos is QoS.AT_LEAST_ONCE
    assert Event.qos is QoS.AT_MOST_ONCE


def test_message_ids_are_unique_and_sort_by_creation_time():
    ids = [new_message_id() for _ in range(2000)]
    assert len(set(ids)) == 2000
    assert all(len(i) == 26 and set(i) <= set("0123456789ABCDEFGHJKMNPQRSTVWXYZ") for i in ids)
    assert all(i[0] in "01234567" for i in ids)  # 128 bits: the first character holds 3
    assert ids[0][:10] <= ids[-1][:10]


def test_subject_follows_the_type_name_unless_overridden():
    class OrderPlacedTwice(Message):
        pass

    class Pinned(Message):
        subject: ClassVar[str | None] = "billing.invoice_due"

    assert OrderPlacedTwice.subject_for("shop") == "shop.order_placed_twice"
    assert Pinned.subject_for("shop") == "billing.invoice_due"


def test_envelope_round_trip_keeps_ids_and_correlation():
    ping = Ping(n=7)
    envelope = encode(ping, QoS.AT_LEAST_ONCE, "svc.ping")
    assert envelope.headers["qm-id"] == ping.message_id
    assert envelope.headers["qm-type"] == "Ping"
    assert ping.correlation_id == ping.message_id
    assert decode_message(envelope, {"Ping": Ping}) == ping


def test_envelope_leaves_out_headers_that_only_say_the_default():
    plain = encode(Ping(n=1), QoS.AT_LEAST_ONCE, "svc.ping")
    assert set(plain.headers) == {"qm-version", "qm-id", "qm-type"}
    assert encode(Ping(n=1), QoS.AT_MOST_ONCE, "svc.ping").headers["qm-qos"] == "0"
    linked = Ping(n=2, correlation_id="req-1")
    assert encode(linked, QoS.AT_LEAST_ONCE, "svc.ping").headers["qm-correlation-id"] == "req-1"

    class PingV2(Ping):
        schema_version: ClassVar[int] = 2

    assert encode(PingV2(n=3), QoS.AT_LEAST_ONCE, "svc.ping").headers["qm-schema"] == "2"


def test_unknown_envelope_version_is_a_specific_error():
    envelope = encode(Ping(n=1), QoS.AT_LEAST_ONCE, "svc.ping")
    envelope.headers["qm-version"] = "9"
    with pytest.raises(UnknownVersionError):
        decode_message(envelope, {"Ping": Ping})


def test_newer_schema_version_is_unknown():
    envelope = encode(Ping(n=1), QoS.AT_LEAST_ONCE, "svc.ping")
    envelope.headers["qm-schema"] = "2"
    with pytest.raises(UnknownVersionError):
        decode_message(envelope, {"Ping": Ping})


@pytest.mark.parametrize("body", [b"{not json", b"\xff\xfe", b'{"n": "seven"}', b""])
def test_corrupt_body_is_a_decode_error(body):
    envelope = encode(Ping(n=1), QoS.AT_LEAST_ONCE, "svc.ping")
    broken = Envelope(headers=envelope.headers, body=body, subject="svc.ping")
    with pytest.raises(DecodeError) as info:
        decode_message(broken, {"Ping": Ping})
    assert info.value.reason == "undecodable"


def test_unknown_type_is_a_decode_error():
    envelope = encode(Ping(n=1), QoS.AT_LEAST_ONCE, "svc.ping")
    with pytest.raises(DecodeError) as info:
        decode_message(envelope, {"Charge": Charge})
    assert info.value.reason == "unknown_type"
