"""What a flood of `$SRV` requests gets from one instance: at most REPLY_BURST replies at once and
REPLIES_PER_SECOND after, every verb together; the rest unanswered and counted; STATS read from
one snapshot a second, however many ask."""

from __future__ import annotations

import time
from collections import Counter

import nats
from nats.aio.msg import Msg

from app.instance.micro import REPLIES_PER_SECOND, REPLY_BURST
from app.observability.instruments import micro_refused
from app.observability.snapshot import MAX_AGE, SNAPSHOTS
from app.testing import eventually, running_app

SERVICE = "micro-limits"
ASKED = {"STATS": 600, "PING": 300, "INFO": 100}


def refused() -> Counter[str]:
    return Counter({str(attributes["verb"]): value for attributes, value in micro_refused.values()})


async def test_requests_over_the_reply_limit_get_no_reply_and_are_counted(
    settings_for, nats_server
):
    settings = settings_for(nats_url=nats_server.url, domain="", service_name=SERVICE)
    async with running_app(settings):
        nc = await nats.connect(nats_server.url)
        answered: Counter[str] = Counter()

        async def collect(msg: Msg) -> None:
            answered[msg.data.split(b'"type": "io.nats.micro.v1.')[1].split(b"_")[0].decode()] += 1

        inbox = nc.new_inbox()
        await nc.subscribe(inbox, cb=collect)
        refused_before, snapshots_before = refused(), SNAPSHOTS.taken
        started = time.monotonic()
        for verb, count in ASKED.items():
            for _ in range(count):
                await nc.publish(f"$SRV.{verb}.{SERVICE}", b"", reply=inbox)
        await nc.flush()

        def settled() -> bool:
            return answered.total() + (refused() - refused_before).total() == sum(ASKED.values())

        await eventually(settled, timeout=10, message="every request answered or refused")
        elapsed = time.monotonic() - started
        await nc.close()

    refused_now = refused() - refused_before
    print(f"\n{dict(answered)} answered, {dict(refused_now)} refused in {elapsed:.3f}s")
    assert answered.total() >= REPLY_BURST
    assert answered.total() <= REPLY_BURST + REPLIES_PER_SECOND * elapsed + 1
    for verb, count in ASKED.items():
        assert answered[verb.lower()] + refused_now[verb] == count, verb
    assert refused_now["PING"] > 0  # one limit for every verb: STATS spent it first
    assert SNAPSHOTS.taken - snapshots_before <= elapsed / MAX_AGE + 1
