"""The database one instance uses: PostgreSQL at APP_DATABASE_URL, or an embedded server under
APP_DATA_DIR when none is given; an SQLAlchemy async engine (asyncpg) on it, checked and
migrated before the service starts."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from app.brokers import redact_url
from app.database.migrate import upgrade
from app.embedded import PostgresServer, StoreLock
from app.errors import DatabaseUnavailableError
from app.observability.instruments import outbox_levels
from app.settings import Settings

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0
READY_TIMEOUT = 1.0


def sqlalchemy_url(url: str) -> str:
    """`postgresql://…` (what asyncpg and every other tool take) as SQLAlchemy's asyncpg URL."""
    scheme, _sep, rest = url.partition("://")
    if scheme in ("postgres", "postgresql", "postgresql+asyncpg"):
        return f"postgresql+asyncpg://{rest}"
    return url


def asyncpg_url(url: str) -> str:
    scheme, _sep, rest = url.partition("://")
    return f"postgresql://{rest}" if scheme.startswith("postgres") else url


@dataclass(slots=True, eq=False)
class Database:
    """The engine and the session factory; `url` is secret (it may hold the password)."""

    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    url: str
    max_backlog: int = 100_000

    async def readiness(self) -> dict[str, str]:
        """The database answers, and the outbox's backlog (as the relay last read it) is
        within APP_OUTBOX_MAX_BACKLOG: past it, new commands wait (back-pressure)."""
        try:
            async with asyncio.timeout(READY_TIMEOUT), self.engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
        except Exception:
            return {"database": "unavailable"}
        backlog = outbox_levels.backlog
        if backlog is not None and backlog > self.max_backlog:
            return {"database": "ok", "outbox": f"backlog {backlog} over {self.max_backlog}"}
        return {"database": "ok"}


def migrate_on_start(settings: Settings) -> bool:
    """APP_DATABASE_MIGRATE, whose default is yes for the embedded database and no for one at
    APP_DATABASE_URL (whose schema a deploy step migrates)."""
    if settings.database_migrate is not None:
        return settings.database_migrate
    return settings.database_url is None


@asynccontextmanager
async def open_database(
    settings: Settings, *, migrate: bool | None = None
) -> AsyncIterator[Database]:
    """Start the embedded server when no URL is given, connect, migrate, and close on exit.
    An unreachable database, or one that refuses us, raises DatabaseUnavailableError with one
    line that never shows the password."""
    async with AsyncExitStack() as stack:
        if settings.database_url is None:
            server = PostgresServer(settings.data_path / "postgres")
            lock = StoreLock(server.store_dir)
            lock.acquire()
            stack.callback(lock.release)
            await asyncio.to_thread(server.start, 30.0)
            stack.callback(server.stop)
            url = server.url
            log.info("using embedded PostgreSQL at %s", url)
        else:
            url = settings.database_url.get_secret_value()
            log.info("using PostgreSQL at %s", redact_url(url))
        try:
            engine = create_async_engine(
                sqlalchemy_url(url),
                pool_size=settings.database_pool_size,
                max_overflow=settings.database_pool_size,
                pool_pre_ping=True,
            )
        except Exception as exc:
            raise _unavailable(url, exc) from None
        stack.push_async_callback(engine.dispose)
        await _check(engine, url)
        if migrate if migrate is not None else migrate_on_start(settings):
            await upgrade(engine)
        sessions = async_sessionmaker(engine, expire_on_commit=False)
        yield Database(engine, sessions, url, settings.outbox_max_backlog)


async def _check(engine: AsyncEngine, url: str) -> None:
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT), engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    except Exception as exc:
        raise _unavailable(url, exc) from None


def _unavailable(url: str, exc: Exception) -> DatabaseUnavailableError:
    """One line naming the server and the reason. The reason is the driver's first line, with
    the URL and its user info cut out should it echo them (SQLAlchemy quotes a URL it cannot
    parse)."""
    reason = (str(exc).splitlines() or [""])[0] or type(exc).__name__
    _scheme, _sep, rest = url.partition("://")
    userinfo, at, _host = rest.rpartition("@")
    for secret in (url, userinfo if at else ""):
        if secret:
            reason = reason.replace(secret, "***")
    return DatabaseUnavailableError(
        f"cannot connect to PostgreSQL at {redact_url(url)}: {type(exc).__name__}: {reason}"
    )
