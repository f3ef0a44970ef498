"""The outbox as an adversary tries it, on real PostgreSQL and nats-server: a row refused for
good in the middle of a backlog, a stream refusing some rows for a while, and a cancel racing a
relay whose publish reached the broker without the relay knowing it."""

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import nats.js.errors
import pytest
from sqlalchemy import func, select

from app.database.connection import Database
from app.database.outbox import Relay
from app.database.tables import handed, outbox
from app.errors import InvalidMessageError, PublishError
from app.messages import H_DELIVER_AT, H_ID, Envelope, Message, QoS
from app.testing import eventually
from app.transports.jetstream.streams import stream_name
from tests.database.conftest import bus_with_database, relay_for
from tests.database.test_outbox import relaying
from tests.transports.conftest import Ping, Running

CANCEL_RUNS = int(os.environ.get("QOSMESH_CANCEL_RUNS", "3"))
"""How many times each cancel race runs: 3 in CI, 20 from `python3 dev.py cancels`."""


class Sized(Message):
    n: int
    pad: str = ""


@contextlib.asynccontextmanager
async def receiving(settings, database: Database) -> AsyncIterator[tuple[Running, list[Ping]]]:
    """A bus on the database whose Ping handler keeps what it receives."""
    got: list[Ping] = []

    async def handle(message: Ping) -> None:
        got.append(message)

    async with bus_with_database(settings, database, lambda b: b.subscribe(Ping, handle)) as bus:
        yield bus, got


async def stored_in_order(running, message_type: type[Message]) -> list[dict[str, Any]]:
    """The bodies of the messages the stream of `message_type` holds on its own subject, in the
    stream's order."""
    js = running.brokers.js
    subject = running.bus.subject(message_type)
    stream = stream_name(subject)
    try:
        info = await js.stream_info(stream)
    except nats.js.errors.NotFoundError:
        return []  # not created yet: nothing published
    bodies = []
    for seq in range(1, info.state.last_seq + 1):
        with contextlib.suppress(Exception):
            stored = await js.get_msg(stream, seq)
            if stored.subject == subject:
                bodies.append(json.loads(stored.data or b"{}"))
    return bodies


def settled(database: Database) -> Callable[[], Awaitable[bool]]:
    """Whether every row is marked sent or dead: a round marks its rows after the broker's acks,
    so a message can be at the broker (and handled) a moment before its row says so."""

    async def check() -> bool:
        async with database.engine.connect() as session:
            waiting = select(func.count()).where(
                outbox.c.sent_at.is_(None), outbox.c.dead_at.is_(None)
            )
            return (await session.execute(waiting)).scalar_one() == 0

    return check


async def dead_rows(database: Database) -> list[tuple[str, str]]:
    async with database.engine.connect() as session:
        rows = await session.execute(
            select(outbox.c.message_id, outbox.c.last_error).where(outbox.c.dead_at.isnot(None))
        )
        return [(r[0], r[1]) for r in rows.all()]


async def test_a_row_refused_for_good_mid_backlog_is_dead_and_every_key_goes_on_in_order(
    db_settings, database
):
    """100 rows on 3 keys, written by an instance whose scheduler keeps any delay (the fallback);
    row 50 is delayed 8 days. The relaying instance is on the server's schedules, which keep
    less: that row is refused for good. It is set aside as dead with its reason; the 99 others,
    its own key's later rows included, reach the broker in commit order per key; the backlog
    never passes its limit, so the instance stays ready."""
    writer_settings = db_settings(scheduler="fallback")
    settings = db_settings(scheduler="native", outbox_batch=4, outbox_max_backlog=60)
    keys = ["a", "b", "c"]
    async with bus_with_database(writer_settings, database, instance="writer") as writer:
        for n in range(100):
            async with database.transaction() as session:
                delay = timedelta(days=8) if n == 50 else None
                message = Ping(n=n)
                await writer.bus.publish(
                    message, session=session, ordering_key=keys[n % 3], delay=delay
                )
                if n == 50:
                    poison = message.message_id
    async with bus_with_database(settings, database, instance="relay") as running:
        relay = relay_for(database, running.bus, settings)
        async with relaying(relay):

            async def delivered() -> bool:
                return len(await stored_in_order(running, Ping)) == 99

            await eventually(delivered, timeout=30, message="the 99 others reached the broker")
            await eventually(settled(database), message="every round marked its rows")
            await relay.read_levels()
            assert await database.readiness() == {"database": "ok"}
        seen = [int(body["n"]) for body in await stored_in_order(running, Ping)]
    for index, key in enumerate(keys):
        expected = [n for n in range(100) if n % 3 == index and n != 50]
        assert [n for n in seen if n % 3 == index] == expected, key
    [(message_id, error)] = await dead_rows(database)
    assert message_id == poison
    assert error.startswith("InvalidMessageError: a delay beyond")


async def test_rows_a_stream_refuses_for_a_while_wait_on_their_own_and_keep_their_key_order(
    db_settings, database
):
    """For 10 s the stream refuses key a's large messages (over its max_msg_size: it may be
    raised, so the rows are retried, never dead). Keys b and c, written after them, reach the
    broker meanwhile; once the limit is raised, key a's rows follow in commit order, each
    having waited on its own backoff."""
    settings = db_settings(outbox_batch=4)
    async with bus_with_database(settings, database) as running:
        await running.bus.publish(Sized(n=-1))  # the stream exists
        js = running.brokers.js
        stream = stream_name(running.bus.subject(Sized))
        config = (await js.stream_info(stream)).config
        config.max_msg_size = 600
        await js.update_stream(config)
        for n in range(60):
            key = "abc"[n % 3]
            async with database.transaction() as session:
                message = Sized(n=n, pad="x" * (1000 if key == "a" else 10))
                await running.bus.publish(message, session=session, ordering_key=key)
        refused_until = time.monotonic() + 10
        async with relaying(relay_for(database, running.bus, settings)):

            async def others_through() -> bool:
                got = {int(b["n"]) for b in await stored_in_order(running, Sized)}
                return {n for n in range(60) if n % 3} <= got

            await eventually(others_through, timeout=6, message="keys b and c went on")
            assert time.monotonic() < refused_until
            await asyncio.sleep(max(0.0, refused_until - time.monotonic()))
            assert await dead_rows(database) == []
            config.max_msg_size = -1
            await js.update_stream(config)

            async def all_through() -> bool:
                return len(await stored_in_order(running, Sized)) == 61

            await eventually(all_through, timeout=30, message="key a followed")
            await eventually(settled(database), message="every round marked its rows")
        seen = [int(b["n"]) for b in await stored_in_order(running, Sized)][1:]
    assert [n for n in seen if n % 3 == 0] == list(range(0, 60, 3))
    async with database.engine.connect() as session:
        tries = (await session.execute(select(outbox.c.attempts).order_by(outbox.c.id))).all()
    assert all(t[0] == 1 for t in tries[1::3] + tries[2::3])
    assert tries[0][0] > 2  # the head of key a was tried again and again, on its own


def _relay_process(settings_env: dict[str, str]) -> subprocess.Popen[bytes]:
    """A relay alone in a process of its own, armed to die between the broker's ack of a row
    and the commit that marks it sent."""
    env = {**os.environ, **settings_env, "QOSMESH_FAILPOINTS": "relay.after_publish"}
    return subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("relay_proc.py"))],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


@pytest.mark.parametrize("run", range(CANCEL_RUNS))
async def test_a_cancel_after_the_relay_died_between_publish_and_commit_never_lies(
    run, db_settings, database, nats_server, postgres_server
):
    """The relay's process publishes the delayed row and is killed before it marks the row
    sent: the row looks unsent. A cancel answering True must mean the message never arrives;
    here the broker holds it, so the cancel takes it back there (True) and nothing arrives."""
    settings = db_settings()
    async with receiving(settings, database) as (running, got):
        message = Ping(n=run)
        async with database.transaction() as session:
            await running.bus.publish(message, session=session, delay=timedelta(seconds=2))
        relay = _relay_process(
            {
                "APP_NATS_URL": nats_server.url,
                "APP_DATABASE_URL": postgres_server.url,
                "APP_SERVICE_NAME": settings.service_name,
                "APP_DATA_DIR": str(settings.data_path / "relay"),
            }
        )
        try:
            code = await asyncio.to_thread(relay.wait, 30)
        finally:
            if relay.poll() is None:
                relay.kill()
        assert code == -signal.SIGKILL, relay.stderr.read().decode() if relay.stderr else ""
        async with database.engine.connect() as session:
            [(row_id, sent_at)] = (
                await session.execute(select(outbox.c.id, outbox.c.sent_at))
            ).all()
            marks = (await session.execute(select(handed.c.id))).scalars().all()
        assert sent_at is None  # never marked sent
        assert marks == [row_id]  # but handed to the broker first
        cancelled = await running.bus.cancel(Ping, message.message_id)
        await asyncio.sleep(3)
    assert cancelled  # the broker confirmed it removed the schedule
    assert got == []


@pytest.mark.parametrize("run", range(CANCEL_RUNS))
async def test_a_cancel_after_a_lost_pub_ack_never_lies(run, db_settings, database):
    """The broker stores the delayed message but the relay never hears so (its PubAck lost):
    the row stays unsent, for a retry. A cancel then must not trust the row: it deletes it
    (no retry sends it again) and asks the broker, which takes the message back."""
    settings = db_settings()
    async with receiving(settings, database) as (running, got):

        async def ack_lost(envelope: Envelope, qos: QoS, transport: str) -> None:
            await running.bus.relay(envelope, qos, transport)
            raise PublishError("no PubAck in time")  # stored, and the relay never knew

        message = Ping(n=run)
        async with database.transaction() as session:
            await running.bus.publish(message, session=session, delay=timedelta(seconds=2))
        relay = Relay(database, ack_lost, settings)
        assert await relay.relay_once() is False
        async with database.engine.connect() as session:
            [(attempts, sent_at, not_before)] = (
                await session.execute(
                    select(outbox.c.attempts, outbox.c.sent_at, outbox.c.not_before)
                )
            ).all()
            marks = (await session.execute(select(handed.c.id))).scalars().all()
        assert (attempts, sent_at) == (1, None)
        assert len(marks) == 1  # handed, and its fate unknown
        assert not_before is not None  # tried again later, on its own
        cancelled = await running.bus.cancel(Ping, message.message_id)
        async with relaying(relay_for(database, running.bus, settings)):
            await asyncio.sleep(3)  # past its time, and past the row's next attempt
    assert cancelled
    assert got == []


async def test_a_delay_no_scheduler_keeps_is_refused_in_the_callers_transaction(
    db_settings, database
):
    """On the server's schedules a delay past the stream's max age (less an hour) is refused
    at write, with the caller's transaction, rather than left to poison the outbox."""
    settings = db_settings(scheduler="native")
    async with bus_with_database(settings, database) as running:
        assert running.bus.max_delay(Ping) == pytest.approx(7 * 86400 - 3600)
        with pytest.raises(InvalidMessageError, match="a delay beyond"):
            async with database.transaction() as session:
                await running.bus.publish(Ping(n=1), session=session, delay=timedelta(days=8))
    async with database.engine.connect() as session:
        assert (await session.execute(select(outbox.c.id))).all() == []


async def test_the_stream_refusing_a_messages_own_headers_is_a_refusal_for_good(db_settings):
    """A schedule whose time the server cannot read (err_code 10189) is refused on every try:
    InvalidMessageError at once, not retries until the budget is spent."""
    settings = db_settings(scheduler="native")
    async with bus_with_database(settings, None) as running:  # type: ignore[arg-type]
        _, transport = running.bus.route(Ping)
        schedules = transport.schedules
        assert schedules is not None
        envelope = Envelope(
            headers={H_ID: "garbled", H_DELIVER_AT: "not a time"},
            body=b'{"n": 1}',
            subject=running.bus.subject(Ping),
        )
        started = time.monotonic()
        soon = datetime.now(UTC) + timedelta(seconds=5)
        with pytest.raises(InvalidMessageError, match="invalid message schedule"):
            await schedules.schedule(envelope, QoS.AT_LEAST_ONCE, soon)
        assert time.monotonic() - started < 1
