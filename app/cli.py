"""The command line: `serve` (the default) runs the service under uvicorn."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from pydantic import ValidationError

from app import dlq_cli
from app.settings import Settings, describe_validation_error


def load_settings() -> Settings | None:
    """Settings from the environment, or None after printing one line per bad variable."""
    try:
        return Settings()
    except ValidationError as exc:
        print(describe_validation_error(exc), file=sys.stderr)
        return None


def serve(settings: Settings) -> int:
    import uvicorn

    from app.logs import configure_logging
    from app.main import create_app

    configure_logging(settings.log_level, settings.log_format)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        timeout_graceful_shutdown=int(settings.drain_timeout) or None,
    )
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m app", description="Run a qosmesh service.")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="run the HTTP service (the default)")
    dlq_cli.add_parser(commands)
    args = parser.parse_args(argv)

    settings = load_settings()
    if settings is None:
        return 2
    if args.command in (None, "serve"):
        return serve(settings)
    if args.command == "dlq":
        logging.basicConfig(level=logging.ERROR)
        return asyncio.run(dlq_cli.run(settings, args))
    parser.error(f"unknown command {args.command}")
    return 2
