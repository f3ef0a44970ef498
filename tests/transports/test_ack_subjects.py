"""The delivery count read off a JetStream ack subject agrees with nats-py's metadata."""

import pytest
from nats.aio.msg import Msg

from app.transports.jetstream.consumer import _delivery_count

V1 = "$JS.ACK.SVC_PING.svc__ping.3.1042.977.1732500000000000000.12"
V2 = "$JS.ACK._.ACCHASH.SVC_PING.svc__ping.4.1042.977.1732500000000000000.12.token"


@pytest.mark.parametrize(("reply", "count"), [(V1, 3), (V2, 4)])
def test_delivery_count_matches_the_metadata(reply, count):
    msg = Msg(_client=None, subject="svc.ping", reply=reply)  # type: ignore[arg-type]
    assert _delivery_count(msg) == msg.metadata.num_delivered == count
