"""`python -m app publish SUBJECT BODY [--header NAME=VALUE ...]`: one raw message into the
JetStream stream that holds SUBJECT, as it is (no envelope of ours), for trying a consumer or
its dead letters from a shell. It waits for the stream's ack and prints where it was stored."""

from __future__ import annotations

import argparse
import sys

import nats.errors
import nats.js.errors

from app.brokers import open_brokers
from app.settings import Settings
from app.transports.registry import needs_redis

ACK_TIMEOUT = 5.0


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    publish = commands.add_parser(
        "publish",
        help="publish one raw message into a stream",
        description="Publish one raw message, as it is (no envelope), into the JetStream\n"
        "stream that holds its subject, and say where it was stored: for trying a\n"
        "consumer, or its dead letters, from a shell.",
        epilog="examples:\n"
        "  python -m app publish qosmesh.order_placed 'not json'\n"
        "  python -m app publish qosmesh.order_placed '{}' --header trace=1",
    )
    publish.add_argument("subject", help="the subject to publish on")
    publish.add_argument("body", help="the message's body, as text")
    publish.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a header of the message (repeatable)",
    )


async def run(settings: Settings, args: argparse.Namespace) -> int:
    headers = {}
    for item in args.header:
        name, sep, value = item.partition("=")
        if not sep or not name:
            print(f"--header {item!r}: expected NAME=VALUE", file=sys.stderr)
            return 2
        headers[name] = value
    async with open_brokers(settings, redis=needs_redis(settings), attach=True) as brokers:
        try:
            ack = await brokers.js.publish(
                args.subject, args.body.encode(), timeout=ACK_TIMEOUT, headers=headers or None
            )
        except (nats.errors.NoRespondersError, nats.js.errors.NoStreamResponseError):
            print(
                f"no stream holds {args.subject!r}: a service that consumes it makes its "
                "stream when it starts (python -m app)",
                file=sys.stderr,
            )
            return 1
    print(f"stored in {ack.stream} as message {ack.seq}")
    return 0
