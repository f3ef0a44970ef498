"""The database one instance uses: PostgreSQL at APP_DATABASE_URL, or an embedded server under
APP_DATA_DIR when none is given; an SQLAlchemy async engine (asyncpg) on it, checked and
migrated before the service starts."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from app.brokers import RUNNING_URL, redact_text, redact_url
from app.brokers.embedded import PostgresServer, StoreLock
from app.database.metrics import outbox_levels
from app.database.migrate import upgrade
from app.errors import ConfigurationError, DatabaseUnavailableError
from app.settings import Settings

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0
COMMAND_TIMEOUT = 30.0
SHARE_TIMEOUT = 30.0
RETRY_CAP = 2.0
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


Transaction = AsyncSession | AsyncConnection
"""What the outbox and the inbox write through: an ORM session or a Core connection, in the
caller's transaction."""


@dataclass(slots=True, eq=False)
class Database:
    """The engine and the session factory; `url` is secret (it may hold the password)."""

    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    url: str
    max_backlog: int = 100_000

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """A connection in a transaction, committed when the block ends, rolled back on an
        error: SQLAlchemy Core, a fraction of the ORM session's cost per statement (an ORM user
        opens `AsyncSession(bind=connection)` on it). The database not answering is
        DatabaseUnavailableError (the API answers 503)."""
        try:
            async with self.engine.begin() as connection:
                yield connection
        except Exception as exc:
            if unavailable(exc):
                raise DatabaseUnavailableError(
                    f"the database did not answer: {type(exc).__name__}"
                ) from exc
            raise

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


UNAVAILABLE: tuple[type[BaseException], ...] = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    asyncpg.PostgresConnectionError,
    # Shutting down, crashed or starting: "terminating connection due to administrator
    # command" and its kind (admin_shutdown, crash_shutdown, cannot_connect_now).
    asyncpg.exceptions.OperatorInterventionError,
    # Out of room: disk full, out of memory, too many connections. Not the caller's fault, and
    # gone once the operator (or a checkpoint, or another client) makes room.
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.InterfaceError,
    OSError,
    TimeoutError,
)
"""The database did not answer (restarting, unreachable, a connection cut, a statement timed
out) or had no room for the work (a full disk): what a caller waits out or answers 503 to,
rather than a failure of its own."""


SAY_EVERY = 5.0
"""Seconds between two lines of a start still waiting for its database."""


def unavailable(exc: BaseException) -> bool:
    """Whether `exc`, or what it wraps, says the database did not answer (SQLAlchemy wraps
    asyncpg's errors, which wrap the socket's)."""
    seen: BaseException | None = exc
    for _ in range(4):
        if seen is None:
            return False
        if isinstance(seen, UNAVAILABLE):
            return True
        if isinstance(seen, sa_exc.DBAPIError):
            if seen.connection_invalidated:
                return True
            orig = seen.orig
            seen = orig if isinstance(orig, BaseException) else seen.__cause__
        else:
            seen = seen.__cause__ or seen.__context__
    return False


def migrate_on_start(settings: Settings) -> bool:
    """APP_DATABASE_MIGRATE, whose default is yes for the embedded database and no for one at
    APP_DATABASE_URL (whose schema a deploy step migrates)."""
    if settings.database_migrate is not None:
        return settings.database_migrate
    return settings.database_url is None


@asynccontextmanager
async def open_database(
    settings: Settings, *, migrate: bool | None = None, domains: Sequence[Path] = ()
) -> AsyncIterator[Database]:
    """Start the embedded server when no URL is given, connect, migrate (qosmesh's tables and
    those of the `domains` migration folders), and close on exit.
    An unreachable database, or one that refuses us, raises DatabaseUnavailableError with one
    line that never shows the password."""
    async with AsyncExitStack() as stack:
        if settings.database_url is None:
            url = await _embedded(stack, settings.data_path / "postgres")
        else:
            url = settings.database_url.get_secret_value()
            log.info("using PostgreSQL at %s", redact_url(url))
        try:
            engine = create_async_engine(
                sqlalchemy_url(url),
                # A fixed pool: connections made past it under load and closed after it cost
                # the server a process each; callers wait for one instead.
                pool_size=settings.database_pool_size,
                max_overflow=0,
                # No ping before each use (a round trip per transaction): a connection the server
                # dropped fails its first statement, is discarded, and the caller's retry or 503
                # follows. A frozen or cut-off server fails a statement instead of hanging it.
                connect_args={"timeout": CONNECT_TIMEOUT, "command_timeout": COMMAND_TIMEOUT},
            )
        except Exception as exc:
            raise _unavailable(url, exc) from None
        stack.push_async_callback(engine.dispose)
        migrating = migrate if migrate is not None else migrate_on_start(settings)
        await _check(engine, url, settings.database_connect_timeout, migrating, domains)
        sessions = async_sessionmaker(engine, expire_on_commit=False)
        yield Database(engine, sessions, url, settings.outbox_max_backlog)


async def _embedded(stack: AsyncExitStack, store: Path) -> str:
    """Start the embedded server under `store`, or share the one another instance on the same
    APP_DATA_DIR runs (it stops when that instance does)."""
    running = store / RUNNING_URL
    lock = StoreLock(store)
    try:
        lock.acquire()
    except ConfigurationError:
        deadline = time.monotonic() + SHARE_TIMEOUT
        while not running.exists():
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
        url = running.read_text().strip()
        log.info("using the embedded PostgreSQL of another instance at %s", url)
        return url
    stack.callback(lock.release)
    running.unlink(missing_ok=True)  # left by an instance that was killed
    try:
        server = PostgresServer(store)
    except ConfigurationError as exc:
        raise ConfigurationError(
            "the service keeps data in PostgreSQL: set APP_DATABASE_URL, or install "
            f"qosmesh[embedded] for an embedded server ({exc})"
        ) from None
    await asyncio.to_thread(server.start, 30.0)
    stack.callback(server.stop)
    running.write_text(server.url)
    stack.callback(running.unlink, missing_ok=True)
    log.info("using embedded PostgreSQL at %s", server.url)
    return server.url


async def _check(
    engine: AsyncEngine, url: str, wait_for: float, migrate: bool, domains: Sequence[Path]
) -> None:
    """Connect once, and migrate when asked. A server that does not answer yet (restarting,
    starting beside us), or goes away during the migration, is waited for up to `wait_for`
    seconds (a migration runs in one transaction under an advisory lock, so it is tried again
    whole); one that answers no (credentials, no such database) stops the start at once."""
    give_up = time.monotonic() + wait_for
    delay = 0.25
    said_at: float | None = None  # when the last "waiting" line was logged
    while True:
        connected = False
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT), engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
            connected = True
            if migrate:
                await upgrade(engine, domains)
            return
        except Exception as exc:
            if connected and not unavailable(exc):
                raise  # the migration itself failed: its own error says why
            if not unavailable(exc) or time.monotonic() + delay > give_up:
                raise _unavailable(url, exc) from None
            now = time.monotonic()
            if said_at is None:
                log.warning(
                    "start: PostgreSQL at %s is not reachable yet (%s); waiting up to %g s "
                    "(APP_DATABASE_CONNECT_TIMEOUT)",
                    redact_url(url),
                    type(exc).__name__,
                    wait_for,
                )
                said_at = now
            elif now - said_at >= SAY_EVERY:
                log.warning(
                    "start: still waiting for PostgreSQL (%s); %.0f s left",
                    type(exc).__name__,
                    give_up - now,
                )
                said_at = now
        await asyncio.sleep(delay)
        delay = min(RETRY_CAP, delay * 2)


def _unavailable(url: str, exc: Exception) -> DatabaseUnavailableError:
    """One line naming the server and the reason: the driver's first line, with the URL's
    secrets hidden should it echo them (SQLAlchemy quotes a URL it cannot parse). The user
    name stays: it is what a `role "..." does not exist` asks to fix."""
    reason = (str(exc).splitlines() or [""])[0] or type(exc).__name__
    if unavailable(exc):
        hint = (
            "is it running and reachable from here? (APP_DATABASE_URL names it; "
            "APP_DATABASE_CONNECT_TIMEOUT is how long a start waits)"
        )
    else:
        hint = "check the user, password and database name in APP_DATABASE_URL"
    return DatabaseUnavailableError(
        f"cannot connect to PostgreSQL at {redact_url(url)}: {type(exc).__name__}: "
        f"{redact_text(reason, url)}; {hint}"
    )
