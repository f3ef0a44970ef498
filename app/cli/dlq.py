"""`python -m app dlq list|show|replay|delete`: the /admin/dlq endpoints from a shell.

It talks to the brokers directly (no admin token): whoever can run it can reach them anyway.
"""

from __future__ import annotations

import argparse
import json
import sys

from app.brokers import open_brokers
from app.errors import QosMeshError
from app.qos.dead_letters import DeadLetters
from app.settings import Settings
from app.transports.registry import build_transports, needs_redis


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    dlq = commands.add_parser("dlq", help="inspect and replay dead letters")
    actions = dlq.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="dead letters, newest first")
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--cursor")
    for action, text in (
        ("show", "one dead letter with its headers and body"),
        ("replay", "send it back through its normal path"),
        ("delete", "drop it"),
    ):
        actions.add_parser(action, help=text).add_argument("dlq_id")


async def run(settings: Settings, args: argparse.Namespace) -> int:
    async with open_brokers(settings, redis=needs_redis(settings), attach=True) as brokers:
        transports = await build_transports(settings, brokers)
        stores = [t.dead_letters for t in transports.by_name.values() if t.dead_letters]
        dead = DeadLetters(stores)
        try:
            if args.action == "list":
                result: object = (await dead.list(args.limit, args.cursor)).model_dump(mode="json")
            elif args.action == "show":
                result = (await dead.get(args.dlq_id)).model_dump(mode="json")
            elif args.action == "replay":
                result = {"dlq_id": args.dlq_id, "message_id": await dead.replay(args.dlq_id)}
            else:
                await dead.delete(args.dlq_id)
                result = {"dlq_id": args.dlq_id, "deleted": True}
        except QosMeshError as exc:
            print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
    print(json.dumps(result, indent=2))
    return 0
