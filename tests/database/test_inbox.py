"""The transactional inbox on real PostgreSQL and nats-server: a handler's database effects
apply once per message id, however often the message arrives, and wait out a database away."""

import asyncio

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from app.database.connection import Database
from app.messages import encode
from app.qos.dead_letters import DeadLetters
from app.testing import eventually
from app.transports.jetstream.transport import MSG_ID
from tests.database.conftest import bus_with_database, effects
from tests.transports.conftest import Charge, Ping


async def applied(database: Database) -> dict[str, int]:
    async with database.sessions() as session:
        rows = await session.execute(
            select(effects.c.message_id, func.count()).group_by(effects.c.message_id)
        )
        return {message_id: count for message_id, count in rows.all()}


def recording(calls: list[str]):
    async def handle(message: Ping | Charge, session: AsyncConnection) -> None:
        calls.append(message.message_id)
        await session.execute(effects.insert().values(message_id=message.message_id, n=message.n))

    return handle


async def test_a_message_delivered_again_applies_its_effect_once(db_settings, database, metrics):
    """The same message published three times past the broker's dedupe (as a publisher outside
    its window would): three deliveries, one effect, the other two acked unrun."""
    settings = db_settings()
    calls: list[str] = []
    before = metrics.value("qosmesh.dedupe.hits", side="inbox")
    setup = lambda bus: bus.subscribe(Ping, recording(calls), transactional=True)  # noqa: E731
    async with bus_with_database(settings, database, setup) as running:
        message = Ping(n=1)
        subject = running.bus.subject(Ping)
        for copy in range(3):
            envelope = encode(message, Ping.qos, subject)
            headers = {**envelope.headers, MSG_ID: f"{message.message_id}-{copy}"}
            await running.brokers.js.publish(subject, envelope.body, headers=headers)
        await eventually(lambda: metrics.value("qosmesh.dedupe.hits", side="inbox") - before == 2)
    assert calls == [message.message_id]
    assert await applied(database) == {message.message_id: 1}


async def test_concurrent_deliveries_of_one_message_apply_it_once(db_settings, database):
    """Two instances get the same message id at once (a redelivery racing the first): the
    second waits on the inbox row and finds it."""
    settings = db_settings()
    calls: list[str] = []

    async def slow(message: Ping, session: AsyncConnection) -> None:
        await recording(calls)(message, session)
        await asyncio.sleep(0.3)  # the other delivery arrives while this one is open

    setup = lambda bus: bus.subscribe(Ping, slow, transactional=True)  # noqa: E731
    async with (
        bus_with_database(settings, database, setup, instance="i1") as first,
        bus_with_database(settings, database, setup, instance="i2"),
    ):
        message = Ping(n=7)
        subject = first.bus.subject(Ping)
        for copy in range(2):
            envelope = encode(message, Ping.qos, subject)
            headers = {**envelope.headers, MSG_ID: f"{message.message_id}-{copy}"}
            await first.brokers.js.publish(subject, envelope.body, headers=headers)
        await eventually(lambda: len(calls) >= 1)
        await asyncio.sleep(1.5)
    assert await applied(database) == {message.message_id: 1}


async def test_a_qos2_transactional_handler_is_once_without_a_claim(db_settings, database):
    settings = db_settings()
    calls: list[str] = []
    setup = lambda bus: bus.subscribe(Charge, recording(calls), transactional=True)  # noqa: E731
    async with bus_with_database(settings, database, setup) as running:
        charge = Charge(n=3)
        await running.bus.publish(charge)
        await eventually(lambda: calls == [charge.message_id])
    assert await applied(database) == {charge.message_id: 1}


async def test_a_database_restart_under_a_handler_loses_no_effect_and_doubles_none(
    db_settings, database, postgres_server
):
    """PostgreSQL is killed and restarted while messages arrive: deliveries wait for it in place
    (with one delivery allowed, a spent try would be a dead letter), and every message's effect
    is applied exactly once."""
    settings = db_settings(max_deliver=1)
    calls: list[str] = []
    setup = lambda bus: bus.subscribe(Ping, recording(calls), transactional=True)  # noqa: E731
    async with bus_with_database(settings, database, setup) as running:
        sent = [Ping(n=n) for n in range(60)]
        for message in sent[:20]:
            await running.bus.publish(message)
        await asyncio.to_thread(postgres_server.kill)
        for message in sent[20:40]:
            await running.bus.publish(message)
        await asyncio.sleep(1.0)
        await asyncio.to_thread(postgres_server.start, 30)
        for message in sent[40:]:
            await running.bus.publish(message)
        want = {m.message_id: 1 for m in sent}
        await eventually(lambda: _applied_is(database, want), timeout=40)
        page = await DeadLetters(running.bus.dead_letters).list()
    assert page.items == []
    assert await applied(database) == want


async def _in_a_statement(session: AsyncConnection) -> None:
    await session.execute(text("SELECT pg_sleep(30)"))


async def _after_a_connection_error(session: AsyncConnection) -> None:
    try:
        raise ConnectionError("the downstream refused")
    except ConnectionError:  # it waits to try the downstream again
        await asyncio.Event().wait()


@pytest.mark.parametrize(
    "hang", [_in_a_statement, _after_a_connection_error], ids=lambda hang: hang.__name__[1:]
)
async def test_a_transactional_handler_past_its_deadline_is_rolled_back_and_tried_again(
    db_settings, database, metrics, hang
):
    """The deadline cuts the handler inside its transaction, in a statement the database still
    runs, or while it handles a connection error of its own: its effect is rolled back, and the
    delivery fails and comes again (a redelivery, not a wait in place for a database away); the
    next one applies it once."""
    settings = db_settings(ack_wait=5)
    calls: list[str] = []

    async def hangs_once(message: Ping, session: AsyncConnection) -> None:
        await recording(calls)(message, session)
        if len(calls) == 1:
            await hang(session)

    def counts() -> tuple[float, float]:
        return (
            metrics.value("qosmesh.handler.timeouts", destination="svc.ping"),
            metrics.value("qosmesh.redeliveries", destination="svc.ping"),
        )

    before = counts()
    setup = lambda bus: bus.subscribe(Ping, hangs_once, transactional=True, timeout=1)  # noqa: E731
    async with bus_with_database(settings, database, setup) as running:
        message = Ping(n=3)
        await running.bus.publish(message)
        await eventually(lambda: _applied_is(database, {message.message_id: 1}), timeout=15)
        await asyncio.sleep(1)  # no third delivery
    assert calls == [message.message_id] * 2
    assert await applied(database) == {message.message_id: 1}
    timeouts, redeliveries = (after - was for after, was in zip(counts(), before, strict=True))
    assert (timeouts, redeliveries) == (1, 1)


def _applied_is(database: Database, want: dict[str, int]):
    async def check() -> bool:
        return await applied(database) == want

    return check()
