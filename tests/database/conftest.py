"""A database on a real PostgreSQL, and buses on real nats-server that write to its outbox."""

from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, Text

from app.brokers import open_brokers
from app.bus import Bus
from app.database.connection import Database, open_database
from app.database.outbox import Relay
from app.settings import Settings
from app.transports.registry import build_transports, needs_redis
from tests.transports.conftest import FAST_BUS, Running

effects_metadata = MetaData()
effects = Table(
    "test_effects",
    effects_metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("message_id", Text, nullable=False),
    Column("n", Integer, nullable=False),
)
"""What a transactional handler in these tests writes: one row per time its effect applied."""


@pytest.fixture
def db_settings(settings_for, nats_server, postgres_server) -> Callable[..., Settings]:
    """Settings for a bus on the test nats-server and PostgreSQL, with fast retries."""

    def make(**overrides: object) -> Settings:
        values: dict[str, object] = {
            "nats_url": nats_server.url,
            "database_url": postgres_server.url,
            **FAST_BUS,
        }
        values.update(overrides)
        settings: Settings = settings_for(**values)
        return settings

    return make


@pytest.fixture
async def database(db_settings) -> AsyncIterator[Database]:
    async with open_database(db_settings(), migrate=True) as database:
        async with database.engine.begin() as connection:
            await connection.run_sync(effects_metadata.create_all)
        yield database


@asynccontextmanager
async def bus_with_database(
    settings: Settings,
    database: Database,
    setup: Callable[[Bus], None] = lambda bus: None,
    instance: str = "i1",
) -> AsyncIterator[Running]:
    async with AsyncExitStack() as stack:
        brokers = await stack.enter_async_context(
            open_brokers(settings, redis=needs_redis(settings))
        )
        transports = await build_transports(settings, brokers)
        bus = Bus(settings, transports.by_name, transports.claim_stores, instance, database)
        setup(bus)
        await bus.start()
        stack.push_async_callback(bus.stop, 5)
        yield Running(bus, brokers, transports)


def relay_for(database: Database, bus: Bus, settings: Settings) -> Relay:
    return Relay(database, bus.relay, settings)
