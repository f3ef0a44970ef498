"""Logging set-up: one JSON object per line for machines, text (coloured on a terminal) for
people; `auto` picks text on a terminal and JSON otherwise. Level from settings."""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

from opentelemetry import trace

_STANDARD = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}
_NOT_FOR_JSON = frozenset({"color_message"})  # uvicorn's copy of the message, with ANSI codes
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_COLOURS = {"DEBUG": "2", "INFO": "36", "WARNING": "33", "ERROR": "31", "CRITICAL": "1;31"}


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line; `extra={...}` fields become top-level keys."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": _ANSI.sub("", record.getMessage()),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in _NOT_FOR_JSON and not key.startswith("_"):
                entry[key] = value
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            entry["trace_id"] = format(context.trace_id, "032x")
            entry["span_id"] = format(context.span_id, "016x")
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class _StartFailure(logging.Filter):
    """Drops the traceback the ASGI server logs for a start the service has already explained
    in one line (`start_failed`): a broker or database that cannot be reached, or settings
    that cannot work, are the operator's to fix, not a bug to debug."""

    reported = False

    def filter(self, record: logging.LogRecord) -> bool:
        if self.reported and str(record.msg).startswith("Traceback"):
            self.reported = False
            return False
        return True


_start_failure = _StartFailure()


def start_failed(log: logging.Logger, exc: BaseException) -> None:
    """One line saying why the service cannot start; the server's traceback of it is dropped."""
    log.error("cannot start: %s", exc)
    _start_failure.reported = True


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message`, the level coloured when `colour`."""

    def __init__(self, colour: bool) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self._colour = colour

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if not self._colour:
            return text
        code = _COLOURS.get(record.levelname)
        level = f" {record.levelname} "
        return text.replace(level, f" \x1b[{code}m{record.levelname}\x1b[0m ", 1) if code else text


def resolve_format(fmt: str) -> str:
    """`auto`: text on a terminal, JSON otherwise (a file, a pipe, a container's log)."""
    if fmt != "auto":
        return fmt
    return "text" if sys.stderr.isatty() else "json"


def configure_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if resolve_format(fmt) == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter(colour=sys.stderr.isatty()))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    logging.getLogger("uvicorn.error").addFilter(_start_failure)
