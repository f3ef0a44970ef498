"""Which database errors mean "the database did not answer" (503 for a command, a wait at
start) rather than a failure of the caller's own."""

import asyncpg
from sqlalchemy import exc as sa_exc

from app.database.connection import unavailable

SHUTDOWNS = (
    asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command"),
    asyncpg.exceptions.CrashShutdownError("terminating connection due to unexpected postmaster"),
    asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
)


def test_a_server_shutting_down_crashing_or_starting_counts_as_unavailable():
    """As SQLAlchemy wraps asyncpg's errors: its adapter's error, caused by asyncpg's. The
    fault-schedule harness found a 500 (seed 101: PostgreSQL killed under a payment, whose
    new connection got "terminating connection due to unexpected postmaster exit")."""
    for cause in SHUTDOWNS:
        adapted = RuntimeError(str(cause))
        adapted.__cause__ = cause
        assert unavailable(sa_exc.DBAPIError("COMMIT", None, adapted)), type(cause).__name__


def test_an_error_of_the_callers_own_is_not_unavailable():
    cause = asyncpg.exceptions.UniqueViolationError("duplicate key value")
    adapted = RuntimeError(str(cause))
    adapted.__cause__ = cause
    assert not unavailable(sa_exc.DBAPIError("INSERT", None, adapted))


def test_a_full_disk_counts_as_unavailable():
    """Class 53 (disk full, out of memory, too many connections): the database cannot take
    the work now and may later, so a command answers 503 with Retry-After. The fault schedules
    found 500s with PostgreSQL's disk full ("could not extend file": the postgres-disk fault)."""
    for cause in (
        asyncpg.exceptions.DiskFullError("could not extend file"),
        asyncpg.exceptions.TooManyConnectionsError("sorry, too many clients already"),
    ):
        adapted = RuntimeError(str(cause))
        adapted.__cause__ = cause
        assert unavailable(sa_exc.DBAPIError("INSERT", None, adapted)), type(cause).__name__
