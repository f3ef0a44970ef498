"""The message contract's own checks: ids that cannot work are refused when the message is
made, and a newer schema waits for the new version before it is dead-lettered."""

import pytest
from pydantic import ValidationError

from app.messages import MAX_ID, DeadLetterReason, Message, NewerSchemaError, QoS
from app.transports.consuming import Verdict, judge


class Charge(Message):
    qos = QoS.EXACTLY_ONCE
    n: int


@pytest.mark.parametrize("bad", ["", " ", "a b", "line\nbreak", "x" * (MAX_ID + 1)])
def test_a_message_id_that_cannot_key_a_qos2_claim_is_refused_when_made(bad):
    with pytest.raises(ValidationError, match="message_id"):
        Charge(n=1, message_id=bad)


def test_a_chosen_message_id_is_kept():
    assert Charge(n=1, message_id="pay-1").message_id == "pay-1"
    assert len(Charge(n=1).message_id) == 26  # a ULID by default


def test_a_newer_schema_is_handed_back_until_its_last_delivery_then_dead_lettered():
    newer = NewerSchemaError("schema 3 is newer than 1")
    waits = [judge(newer, attempt, 5) for attempt in range(1, 5)]
    assert all(w.verdict is Verdict.RETRY for w in waits)
    assert all(w.delay >= 0.5 for w in waits)
    last = judge(newer, 5, 5)
    assert last.verdict is Verdict.DEAD
    assert last.failure.reason == DeadLetterReason.UNKNOWN_VERSION
