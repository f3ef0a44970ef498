"""A relay alone in its own process (tests/database/test_outbox_faults.py): the bus and the
outbox relay of the settings in its environment, relaying until a fail point kills it."""

import asyncio

from app.brokers import open_brokers
from app.bus import Bus
from app.database.connection import open_database
from app.database.outbox import Relay
from app.settings import Settings
from app.transports.registry import build_transports, needs_redis


async def main() -> None:
    settings = Settings()
    async with (
        open_database(settings, migrate=False) as database,
        open_brokers(settings, redis=needs_redis(settings)) as brokers,
    ):
        transports = await build_transports(settings, brokers)
        bus = Bus(settings, transports.by_name, transports.claim_stores, "relay", database)
        await bus.start()
        await Relay(database, bus.relay, settings).run()


asyncio.run(main())
