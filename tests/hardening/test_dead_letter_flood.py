"""A flood of undecodable messages on one of the example's subjects keeps the dead-letter store
within its bound, counts what the bound drops, and the instance stays ready."""

import asyncio

import httpx
import pytest

from app.instance.services import services_of
from app.testing import eventually, running_app
from app.transports.jetstream.dead_letters import JetStreamDeadLetters

pytestmark = pytest.mark.slow  # long: run in CI, left out of a generated project's quick run

FLOOD = 10_000
BOUND = 1_000


def store_of(app: object) -> JetStreamDeadLetters:
    store = services_of(app).bus.dead_letters[0]  # type: ignore[arg-type]
    assert isinstance(store, JetStreamDeadLetters)
    return store


async def test_a_flood_of_undecodable_messages_keeps_the_store_within_its_bound(
    settings_for, nats_server, metrics
):
    """10,000 undecodable messages at a bound of 1,000: every one is dead-lettered on its
    first delivery, the stream never holds more than the bound, the records dropped for room
    are counted (qosmesh_dead_letters_dropped_total), and the instance stays ready throughout."""
    settings = settings_for(nats_url=nats_server.url, dlq_max_messages=BOUND)
    on_nats = {"messaging.system": "nats", "policy": "old"}
    before = metrics.value("qosmesh.dead_letters.dropped", **on_nats)  # a process-wide sum
    async with (
        running_app(settings) as (app, url),
        httpx.AsyncClient(base_url=url, timeout=10) as client,
    ):
        store = store_of(app)
        js = services_of(app).brokers.js
        subject = f"{settings.service_name}.order_placed"
        sent = [js.publish(subject, b"\xff not a message %d" % n) for n in range(FLOOD)]
        for chunk in range(0, FLOOD, 500):
            await asyncio.gather(*sent[chunk : chunk + 500])
        largest = 0
        not_ready = 0

        async def all_settled() -> bool:
            nonlocal largest, not_ready
            state = (await js.stream_info(store.stream)).state
            largest = max(largest, state.messages)
            if (await client.get("/readyz")).status_code != 200:
                not_ready += 1
            return state.last_seq >= FLOOD

        await eventually(all_settled, timeout=180, interval=0.2)
        state = (await js.stream_info(store.stream)).state
    assert state.last_seq == FLOOD  # every message was dead-lettered, once
    assert largest <= BOUND
    assert state.messages <= BOUND
    assert state.messages >= BOUND * 0.9  # the newest kept, not everything dropped
    dropped = metrics.value("qosmesh.dead_letters.dropped", **on_nats) - before
    assert dropped == FLOOD - state.messages
    assert not_ready == 0
