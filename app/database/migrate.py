"""Schema migrations by Alembic, run from code: on start (APP_DATABASE_MIGRATE) or by
`python -m app db upgrade`. Instances starting together take turns on an advisory lock, so
each migration runs once.

qosmesh's own tables have their revisions in `migrations/versions`. A domain that keeps tables
has its own folder of revisions, on its own branch (`down_revision = None`, a branch label), so
deleting the domain deletes its migrations with it: its package names the folder as
`MIGRATIONS`, and an upgrade goes to every branch's head."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncEngine

MIGRATIONS = Path(__file__).parent / "migrations"
MIGRATION_LOCK = 0x716D6967  # "qmig": the advisory lock instances migrate under


class _OneLine(logging.Filter):
    """Alembic logs each revision with the first paragraph of its docstring, wrapped over
    several lines: one event, one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "\n" in message:
            record.msg, record.args = " ".join(message.split()), None
        return True


logging.getLogger("alembic.runtime.migration").addFilter(_OneLine())


def _config(connection: Connection, domains: Sequence[Path]) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    locations = [MIGRATIONS / "versions", *domains]
    config.set_main_option("path_separator", "os")
    config.set_main_option("version_locations", os.pathsep.join(str(path) for path in locations))
    config.attributes["connection"] = connection
    return config


async def upgrade(engine: AsyncEngine, domains: Sequence[Path] = ()) -> None:
    """Bring the schema to the newest revision of every branch, in one transaction."""

    def run(connection: Connection) -> None:
        connection.execute(text("SELECT pg_advisory_xact_lock(:lock)"), {"lock": MIGRATION_LOCK})
        command.upgrade(_config(connection, domains), "heads")

    async with engine.begin() as connection:
        await connection.run_sync(run)


async def current_revisions(engine: AsyncEngine) -> list[str]:
    """The revision each branch is at."""
    from alembic.runtime.migration import MigrationContext

    def read(connection: Connection) -> list[str]:
        return sorted(MigrationContext.configure(connection).get_current_heads())

    async with engine.connect() as connection:
        return await connection.run_sync(read)
