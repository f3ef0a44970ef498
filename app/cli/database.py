"""`python -m app db upgrade|current`: the schema, from a shell (the deploy step when the
database is at APP_DATABASE_URL and migrations do not run on start)."""

from __future__ import annotations

import argparse
import sys

from app.database.connection import open_database
from app.database.migrate import current_revisions
from app.errors import ConfigurationError, DatabaseUnavailableError
from app.instance.relay import domain_migrations
from app.settings import Settings


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    database = commands.add_parser(
        "db",
        help="the database's schema",
        description="The schema of the database at APP_DATABASE_URL (or the embedded one):\n"
        "migrate it, or say which revision it is at.",
        epilog="examples:\n  python -m app db upgrade\n  python -m app db current",
    )
    actions = database.add_subparsers(dest="db_command", required=True, help="what to do")
    actions.add_parser(
        "upgrade",
        help="migrate the schema to the newest revision",
        description="Migrate the schema to the newest revision: the deploy step, when\n"
        "migrations do not run as the service starts.",
        epilog="example:\n  APP_DATABASE_URL=postgresql://... python -m app db upgrade",
    )
    actions.add_parser(
        "current",
        help="print the schema's revision",
        description="Print the revision the schema is at.",
        epilog="example:\n  python -m app db current",
    )


async def run(settings: Settings, args: argparse.Namespace) -> int:
    """`upgrade` migrates, `current` prints the revision. A database that cannot be reached is
    one line and exit code 1."""
    from app.main import load_domain

    try:
        domains = domain_migrations(load_domain(settings.domain))
        upgrade = args.db_command == "upgrade"
        async with open_database(settings, migrate=upgrade, domains=domains) as db:
            revisions = await current_revisions(db.engine)
    except (DatabaseUnavailableError, ConfigurationError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"schema at revision {', '.join(revisions) or 'none'}")
    return 0
