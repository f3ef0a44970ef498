"""`python -m app outbox dead|show ID|retry ID|discard ID`: the outbox's dead rows from a shell,
as `/admin/outbox` serves them (app/database/dead_rows.py). With the embedded database it joins
a running instance's server on the same APP_DATA_DIR."""

from __future__ import annotations

import argparse
import sys

from app.database import dead_rows
from app.database.connection import Database, open_database
from app.errors import ConfigurationError, DatabaseUnavailableError, DeadRowNotFoundError
from app.settings import Settings


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    outbox = commands.add_parser(
        "outbox",
        help="the outbox's dead rows",
        description="The outbox's dead rows: messages the relay gave up sending. The\n"
        "console's outbox rows, from a shell.",
        epilog="examples:\n  python -m app outbox dead\n  python -m app outbox retry 42",
    )
    actions = outbox.add_subparsers(dest="outbox_command", required=True, help="what to do")
    listing = actions.add_parser(
        "dead",
        help="list the dead rows, oldest first",
        description="The dead rows, oldest first: id, when, type, message id, ordering key\n"
        "and error.",
        epilog="example:\n  python -m app outbox dead --limit 20",
    )
    listing.add_argument(
        "--limit", type=int, default=50, metavar="N", help="at most N rows (default 50)"
    )
    for name, what in (
        ("show", "one dead row with its headers and body"),
        ("retry", "hand a dead row back to the relay, once its cause is fixed"),
        ("discard", "delete a dead row: its message is never sent"),
    ):
        action = actions.add_parser(
            name,
            help=what,
            description=f"{what.capitalize()}.",
            epilog=f"example:\n  python -m app outbox {name} 42",
        )
        action.add_argument("id", type=int, help="its id, as `outbox dead` shows it")


async def run(settings: Settings, args: argparse.Namespace) -> int:
    try:
        async with open_database(settings, migrate=False) as database:
            return await _act(database, args)
    except (DatabaseUnavailableError, ConfigurationError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except DeadRowNotFoundError as exc:
        print(f"{exc}: python -m app outbox dead shows the ids", file=sys.stderr)
        return 1


async def _act(database: Database, args: argparse.Namespace) -> int:
    command = args.outbox_command
    if command == "dead":
        found = await dead_rows.page(database, max(1, min(args.limit, dead_rows.PAGE_LIMIT)))
        print(f"{found.total} dead row(s)")
        for row in found.items:
            print(
                f"{row.id}  {row.dead_at:%Y-%m-%d %H:%M:%S}  {row.type}  {row.message_id}  "
                f"key={row.ordering_key or '-'}  {row.error}"
            )
    elif command == "show":
        detail = await dead_rows.show(database, args.id)
        print(detail.model_dump_json(indent=2))
    elif command == "retry":
        await dead_rows.retry(database, args.id)
        print(f"outbox row {args.id} handed back to the relay")
    else:
        await dead_rows.discard(database, args.id)
        print(f"outbox row {args.id} discarded")
    return 0
