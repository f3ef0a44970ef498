"""The database's part in a running service: whether one is opened, with which migrations, its
readiness check, and the outbox relay publishing through the current bus."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from types import ModuleType

from app.database.connection import Database, open_database
from app.instance.readiness import Readiness
from app.instance.services import Services
from app.messages import Envelope, QoS
from app.settings import Settings
from app.supervision import supervised
from app.transports.registry import wanted


def uses_database(settings: Settings, domain: ModuleType | None) -> bool:
    """A database is opened when APP_DATABASE_URL names one or the domain declares that it
    keeps its data in one (`USES_DATABASE = True`)."""
    return settings.database_url is not None or bool(getattr(domain, "USES_DATABASE", False))


def domain_migrations(domain: ModuleType | None) -> list[Path]:
    """The domain's folder of migrations (its `MIGRATIONS`), if it keeps tables."""
    folder = getattr(domain, "MIGRATIONS", None)
    return [Path(folder)] if folder is not None else []


@asynccontextmanager
async def service_database(
    settings: Settings, domain: ModuleType | None, readiness: Readiness
) -> AsyncIterator[Database | None]:
    """The service's database, checked, migrated and part of readiness; None when it has none."""
    if not uses_database(settings, domain):
        yield None
        return
    async with open_database(settings, domains=domain_migrations(domain)) as database:
        readiness.add(database.readiness)
        yield database


@contextmanager
def relaying(services: Services) -> Iterator[None]:
    """The outbox relay, publishing through whichever bus the rebuilder holds now."""
    from app.database.outbox import Relay

    async def publish(envelope: Envelope, qos: QoS, transport: str) -> None:
        await services.bus.relay(envelope, qos, transport)

    assert services.database is not None
    # Rows for a transport this instance lacks wait for an instance that has it (a rolling deploy).
    relay = Relay(services.database, publish, services.settings, sorted(wanted(services.settings)))
    task = supervised(relay.run(), "outbox relay")
    try:
        yield
    finally:
        task.cancel()
