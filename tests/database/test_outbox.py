"""The transactional outbox on real PostgreSQL and nats-server: a message reaches the broker if
and only if its transaction commits, once, in commit order per key, with the broker away too."""

import asyncio
import contextlib
import json
import random
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from app.brokers.embedded import NatsServer
from app.database.connection import Database
from app.database.metrics import outbox_levels
from app.database.outbox import Relay
from app.database.tables import outbox
from app.errors import ConfigurationError, MessageTooLargeError
from app.messages import H_ID, Message
from app.testing import eventually
from app.transports.jetstream.streams import stream_name
from app.transports.jetstream.transport import MSG_ID
from tests.database.conftest import bus_with_database, relay_for
from tests.transports.conftest import Notice, Ping


async def unsent(database: Database) -> int:
    async with database.sessions() as session:
        return int(
            (
                await session.execute(select(func.count()).where(outbox.c.sent_at.is_(None)))
            ).scalar_one()
        )


def _drained(database: Database):
    async def check() -> bool:
        return await unsent(database) == 0

    return check


@contextlib.asynccontextmanager
async def relaying(relay: Relay) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(relay.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_message_reaches_the_broker_only_if_its_transaction_commits(db_settings, database):
    settings = db_settings()
    got: list[Ping] = []

    async def handle(message: Ping) -> None:
        got.append(message)

    async with bus_with_database(
        settings, database, lambda b: b.subscribe(Ping, handle)
    ) as running:
        kept = Ping(n=2)
        async with database.sessions() as session:
            await running.bus.publish(Ping(n=1), session=session)
            await session.rollback()
            await running.bus.publish(kept, session=session)
            await session.commit()
        async with relaying(relay_for(database, running.bus, settings)):
            await eventually(lambda: len(got) == 1)
            await eventually(_drained(database), message="the row marked sent")
            await asyncio.sleep(0.5)
        assert [m.message_id for m in got] == [kept.message_id]
        stream = stream_name(running.bus.subject(Ping))
        last = await running.brokers.js.get_last_msg(stream, running.bus.subject(Ping))
        assert last.headers is not None
        assert last.headers[MSG_ID] == last.headers[H_ID] == kept.message_id


async def test_qos0_and_a_bus_without_a_database_refuse_the_outbox(db_settings, database):
    settings = db_settings()
    async with bus_with_database(settings, database) as running, database.sessions() as session:
        with pytest.raises(ConfigurationError, match="QoS 0"):
            await running.bus.publish(Notice(n=1), session=session)
    async with bus_with_database(settings, None) as running, database.sessions() as session:  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError, match="needs the database"):
            await running.bus.publish(Ping(n=1), session=session)


class Blob(Message):
    data: str


async def test_a_message_over_the_size_limit_is_refused_in_the_callers_transaction(
    db_settings, database
):
    """In the outbox it could never be published, and would hold up its key's messages."""
    settings = db_settings(max_message_bytes=2048)
    async with bus_with_database(settings, database) as running, database.sessions() as session:
        await running.bus.publish(Blob(data="x" * 1500), session=session, ordering_key="k")
        with pytest.raises(MessageTooLargeError, match="APP_MAX_MESSAGE_BYTES"):
            await running.bus.publish(Blob(data="x" * 3000), session=session, ordering_key="k")
        await session.commit()
    assert await unsent(database) == 1  # the one that fits


async def test_two_relays_publish_each_row_once_and_every_key_in_commit_order(
    db_settings, database
):
    """A backlog on 4 keys, then two relays sharing it in small batches while writers keep
    committing. At the broker (the stream, in its own order) every message is there once, and
    each key's in commit order."""
    settings = db_settings(outbox_batch=8)
    keys = [f"order-{i}" for i in range(4)]
    committed: dict[str, list[int]] = {key: [] for key in keys}

    async def writer(key: str, numbers: range, bus) -> None:
        for n in numbers:
            async with database.sessions() as session, session.begin():
                await bus.publish(Ping(n=n), session=session, ordering_key=key)
                await asyncio.sleep(random.random() / 500)  # transactions overlap
            committed[key].append(n)

    async with (
        bus_with_database(settings, database, instance="i1") as first,
        bus_with_database(settings, database, instance="i2") as second,
    ):
        await asyncio.gather(*(writer(key, range(40), first.bus) for key in keys))
        async with (
            relaying(relay_for(database, first.bus, settings)),
            relaying(relay_for(database, second.bus, settings)),
        ):
            await asyncio.gather(*(writer(key, range(40, 60), second.bus) for key in keys))
            await eventually(_drained(database), timeout=30, message="the outbox drained")

    seen: dict[str, list[int]] = {key: [] for key in keys}
    async with bus_with_database(settings, database) as running:
        js = running.brokers.js
        stream = stream_name(running.bus.subject(Ping))
        info = await js.stream_info(stream)
        key_of = await _keys_by_message(database)
        for seq in range(1, info.state.last_seq + 1):
            stored = await js.get_msg(stream, seq)
            assert stored.headers is not None
            seen[key_of[stored.headers[H_ID]]].append(json.loads(stored.data or b"")["n"])
    assert info.state.messages == 4 * 60
    assert seen == committed


async def test_a_row_the_broker_refuses_as_too_large_is_set_aside_and_its_key_goes_on(
    db_settings, database, tmp_path
):
    """A broker whose max_payload is below APP_MAX_MESSAGE_BYTES: the row passed the size check
    in its transaction but can never be published. It is set aside as dead (kept, counted, not
    retried), and the rows after it in its key are published."""
    config = tmp_path / "small.conf"
    config.write_text("max_payload: 8192\n")
    server = NatsServer(tmp_path / "nats", extra_args=["-c", str(config)])
    server.start()
    got: list[int] = []

    async def handle(message: Blob) -> None:
        got.append(len(message.data))

    try:
        settings = db_settings(nats_url=server.url)
        async with bus_with_database(
            settings, database, lambda b: b.subscribe(Blob, handle)
        ) as running:
            async with database.sessions() as session, session.begin():
                for size in (100, 20000, 200):
                    blob = Blob(data="x" * size)
                    await running.bus.publish(blob, session=session, ordering_key="k")
            relay = relay_for(database, running.bus, settings)
            async with relaying(relay):
                await eventually(lambda: sorted(got) == [100, 200], timeout=15)

                async def settled() -> bool:  # the round marks its rows after the broker's acks
                    return await relay.read_levels() == (0, 0.0)

                await eventually(settled, timeout=10, message="the round marked its rows")
            assert outbox_levels.dead == 1
        async with database.sessions() as session:
            dead = (
                await session.execute(
                    select(outbox.c.attempts, outbox.c.last_error).where(
                        outbox.c.dead_at.isnot(None)
                    )
                )
            ).all()
        assert [(attempts, error.split(":")[0]) for attempts, error in dead] == [
            (1, "MessageTooLargeError")
        ]
    finally:
        server.stop()


async def _keys_by_message(database: Database) -> dict[str, str]:
    async with database.sessions() as session:
        rows = await session.execute(select(outbox.c.message_id, outbox.c.ordering_key))
        return {message_id: key for message_id, key in rows.all()}


async def test_rows_committed_while_the_broker_is_away_are_published_when_it_returns(
    db_settings, database, nats_server
):
    settings = db_settings()
    got: list[int] = []

    async def handle(message: Ping) -> None:
        got.append(message.n)

    async with (
        bus_with_database(settings, database, lambda b: b.subscribe(Ping, handle)) as running,
        relaying(relay_for(database, running.bus, settings)),
    ):
        nats_server.stop()
        for n in range(20):
            async with database.sessions() as session, session.begin():
                await running.bus.publish(Ping(n=n), session=session)
        await asyncio.sleep(1.5)
        assert await unsent(database) == 20
        nats_server.start()
        await eventually(lambda: sorted(set(got)) == list(range(20)), timeout=30)
        await eventually(_drained(database), message="every row marked sent")


async def test_sent_rows_go_after_the_retention_and_unsent_ones_stay(db_settings, database):
    settings = db_settings(outbox_retention=3600)
    async with bus_with_database(settings, database) as running:
        relay = relay_for(database, running.bus, settings)
        for n in range(3):
            async with database.sessions() as session, session.begin():
                await running.bus.publish(Ping(n=n), session=session)
        assert await relay.relay_once() is False
        async with database.sessions() as session, session.begin():
            await session.execute(
                update(outbox)
                .where(outbox.c.id == select(func.min(outbox.c.id)).scalar_subquery())
                .values(sent_at=func.now() - timedelta(hours=2))
            )
            await running.bus.publish(Ping(n=9), session=session)
        await relay.prune()
        backlog, oldest = await relay.read_levels()
    async with database.sessions() as session:
        left = (await session.execute(select(func.count()).select_from(outbox))).scalar_one()
    assert left == 3  # two sent within the retention, one unsent
    assert backlog == 1
    assert oldest >= 0


async def test_a_delayed_message_is_cancelled_in_the_outbox_or_at_the_broker(db_settings, database):
    """Before the relay publishes it, cancel takes the row back; after, the broker's schedule."""
    settings = db_settings()
    got: list[Ping] = []

    async def handle(message: Ping) -> None:
        got.append(message)

    async with bus_with_database(
        settings, database, lambda b: b.subscribe(Ping, handle)
    ) as running:
        in_outbox, at_broker = Ping(n=1), Ping(n=2)
        async with database.transaction() as session:
            await running.bus.publish(in_outbox, session=session, delay=timedelta(seconds=1))
        assert await running.bus.cancel(Ping, in_outbox.message_id)
        assert await unsent(database) == 0
        async with database.transaction() as session:
            await running.bus.publish(at_broker, session=session, delay=timedelta(seconds=1))
        async with relaying(relay_for(database, running.bus, settings)):
            await eventually(_drained(database), message="the row relayed")
            assert await running.bus.cancel(Ping, at_broker.message_id)
            await asyncio.sleep(1.5)
        assert got == []
