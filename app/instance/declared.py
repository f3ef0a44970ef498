"""The service's messages as its domain declares them, without a broker or a database: the
domain's `setup` run on a bus that routes but never connects and is never started. What a
service sends and receives is then known before its NATS user exists (`python -m app
nats-permissions`), as `/asyncapi.json` knows it in a running instance."""

from __future__ import annotations

from types import ModuleType
from typing import Any, NoReturn, cast

from app.brokers import Brokers
from app.bus import Bus
from app.database.connection import Database
from app.errors import ConfigurationError
from app.instance.relay import uses_database
from app.messages import Envelope, QoS
from app.qos.claims import MemoryClaimStore
from app.settings import Settings
from app.transports.base import Subscription
from app.transports.registry import spec_of, wanted

INSTANCE = "declared"


async def declared_bus(settings: Settings, domain: ModuleType | None) -> Bus:
    """The bus as `domain.setup` leaves it. The setup gets brokers it must not use (it only
    registers handlers and declares types), and a database that is never opened."""
    names = sorted(wanted(settings))
    transports: dict[str, Any] = {name: _Unconnected(name) for name in names}
    # A QoS 2 handler needs a claim store to be registered; none is ever asked.
    claims = {name: MemoryClaimStore(60.0) for name in names if spec_of(name).reliable}
    database = _unopened() if uses_database(settings, domain) else None
    bus = Bus(settings, transports, claims, INSTANCE, database)
    if domain is not None:
        await domain.setup(bus, cast(Brokers, _NoBrokers()), settings)
    return bus


class _Unconnected:
    """A transport by name only: routes resolve to it, nothing reaches a broker. Delays of any
    length are accepted here: the running transport checks them."""

    dead_letters = None

    def __init__(self, name: str) -> None:
        self.name = name
        self.schedules = _AnyDelay() if spec_of(name).reliable else None

    async def start(self) -> None:
        _refuse("start")

    async def publish(self, envelope: Envelope, qos: QoS) -> None:
        _refuse("publish")

    async def subscribe(self, subscription: Subscription) -> None:
        _refuse("subscribe")

    async def stop(self, timeout: float) -> None:
        return None


class _AnyDelay:
    native = True
    max_delay = None


class _NoBrokers:
    def __getattr__(self, name: str) -> NoReturn:
        raise ConfigurationError(
            f"the domain's setup uses the brokers (brokers.{name}): its messages cannot be "
            "declared without a connection; register handlers and declare types only in setup"
        )


def _refuse(what: str) -> NoReturn:
    raise ConfigurationError(f"a declared bus does not {what}: it only routes")


def _unopened() -> Database:
    """A database for the setup to keep (the inbox's handlers hold it); an engine connects on
    first use, and this one is never used."""
    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

    url = "postgresql+asyncpg://unopened.invalid/declared"
    engine = create_async_engine(url)
    return Database(engine, async_sessionmaker(engine), url)
