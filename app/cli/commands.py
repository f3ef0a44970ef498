"""The command line: `serve` (the default) runs the service under uvicorn."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import Coroutine
from types import FrameType
from typing import Any, cast

import uvicorn
from fastapi import FastAPI
from pydantic import ValidationError

from app.cli import database, dlq, nats_permissions, nodes, outbox, publish
from app.cli.binding import bind
from app.errors import BrokerUnavailableError, ConfigurationError
from app.instance.services import services_of
from app.settings import Settings, describe_validation_error
from app.transports.registry import wanted


def load_settings() -> Settings | None:
    """Settings from the environment, or None after printing one line per bad variable."""
    try:
        settings = Settings()
        wanted(settings)  # every transport named must be one the registry knows
    except ValidationError as exc:
        print(describe_validation_error(exc), file=sys.stderr)
        return None
    except ConfigurationError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return None
    return settings


class DrainingServer(uvicorn.Server):
    """uvicorn that starts the app's drain (readiness off, leave discovery, settle messages) the
    moment SIGTERM or SIGINT arrives, while it finishes in-flight HTTP requests."""

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self.app = app

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        drain = services_of(self.app).drain
        if drain is not None:
            drain.begin_from_signal()
        super().handle_exit(sig, frame)


def serve(settings: Settings) -> int:
    from app.logs import configure_logging
    from app.main import create_app

    sock = bind(settings.host, settings.port)
    if sock is None:
        return 2
    configure_logging(settings.log_level, settings.log_format)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        timeout_graceful_shutdown=int(settings.drain_timeout) or None,
    )
    server = DrainingServer(config, app)
    server.run(sockets=[sock])
    return 0 if server.started else 3


EXAMPLES = """\
examples:
  python -m app                  run the service (the same as `serve`)
  python -m app --instances 3    three instances, on ports from APP_PORT up
  python -m app dlq list         the dead letters, as a table
  python -m app nodes --watch    the instances discovery sees, then each change

python -m app COMMAND --help says what a command does, with examples.
Settings come from APP_* environment variables (README.md, Configuration)."""


INSTANCES_HELP = "run N instances sharing one embedded broker, on ports from APP_PORT up"


class Parser(argparse.ArgumentParser):
    """A parser that prints its description and examples as they are written (lines of at
    most 78 characters); the parsers of its commands and their subcommands are of this class
    too, as argparse makes them of their parent's."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(**kwargs)


def build_parser() -> argparse.ArgumentParser:
    """The command line: every command and subcommand, each with its help and examples."""
    parser = Parser(
        prog="python -m app",
        description="Run a qosmesh service, or look after one with the commands below.",
        epilog=EXAMPLES,
    )
    # Its commands' parsers are Parsers too, which argparse's types cannot say.
    commands = cast(
        "argparse._SubParsersAction[argparse.ArgumentParser]",
        parser.add_subparsers(dest="command", metavar="COMMAND", help="serve when none is named"),
    )
    parser.add_argument(
        "--instances",
        type=int,
        default=1,
        metavar="N",
        help=INSTANCES_HELP,
    )
    serving = commands.add_parser(
        "serve",
        help="run the HTTP service (the default)",
        description="Run the HTTP service on APP_HOST:APP_PORT until Ctrl-C or SIGTERM,\n"
        "which drain it first.",
        epilog="examples:\n"
        "  python -m app serve\n"
        "  APP_PORT=9000 python -m app serve --instances 2",
    )
    serving.add_argument(
        "--instances",
        type=int,
        default=argparse.SUPPRESS,
        metavar="N",
        help=INSTANCES_HELP,
    )
    dlq.add_parser(commands)
    database.add_parser(commands)
    outbox.add_parser(commands)
    nodes.add_parser(commands)
    publish.add_parser(commands)
    nats_permissions.add_parser(commands)
    return parser


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.instances < 1:
        parser.error("--instances: 1 or more")

    settings = load_settings()
    if settings is None:
        return 2
    if args.command in (None, "serve") and args.instances > 1:
        from app.cli import instances

        return instances.run(settings, args.instances)
    if args.command in (None, "serve"):
        return serve(settings)
    if args.command == "publish":
        return with_brokers(publish.run(settings, args))
    if args.command == "nodes":
        with contextlib.suppress(KeyboardInterrupt):
            return with_brokers(nodes.run(settings, args))
        return 0
    if args.command == "dlq":
        return with_brokers(dlq.run(settings, args))
    if args.command == "db":
        logging.basicConfig(level=logging.ERROR)
        return asyncio.run(database.run(settings, args))
    if args.command == "outbox":
        logging.basicConfig(level=logging.ERROR)
        return asyncio.run(outbox.run(settings, args))
    if args.command == "nats-permissions":
        logging.basicConfig(level=logging.ERROR)
        return asyncio.run(nats_permissions.run(settings, args))
    parser.error(f"unknown command {args.command}")
    return 2


def with_brokers(command: Coroutine[Any, Any, int]) -> int:
    """A command that talks to the brokers; brokers it cannot reach are one line, exit 1."""
    logging.basicConfig(level=logging.ERROR)
    try:
        return asyncio.run(command)
    except BrokerUnavailableError as exc:
        print(
            f"{exc}: start the service (python -m app), or set APP_NATS_URL to its broker",
            file=sys.stderr,
        )
        return 1
