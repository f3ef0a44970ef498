"""Every `python -m app ...` command: `serve` and the parser (`commands`), N instances on shared
embedded servers (`instances`), and the tools `nodes`, `dlq`, `publish` and `db`."""

from app.cli.commands import main

__all__ = ["main"]
