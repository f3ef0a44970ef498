"""`python -m app nodes [--watch] [--service NAME]`: the discovery view from a terminal.

It reads the discovery bucket of any NATS (the usual APP_NATS_* settings; with none, the
embedded server of an instance running from the same APP_DATA_DIR) without registering
itself: a table of the live instances (service, node, address, version, uptime, ready), and
with `--watch` every join, change and leave as it happens, like `/nodes/events`. `ready` is the
instance's own `/readyz`, asked over HTTP (`?` when its address cannot be reached from here).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TextIO

import httpx
from nats.js.errors import BucketNotFoundError, NotFoundError
from nats.js.kv import KeyValue
from pydantic import ValidationError

from app.brokers import open_brokers
from app.discovery.models import NodeInfo
from app.settings import Settings
from app.transports.registry import needs_redis

READY_TIMEOUT = 1.0
COLUMNS = ("SERVICE", "NODE", "ADDRESS", "VERSION", "UPTIME", "READY")


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    nodes = commands.add_parser(
        "nodes",
        help="list the instances discovery sees",
        description="The instances in the discovery bucket, as a table: service, node,\n"
        "address, version, uptime, and whether each answers /readyz. It registers\n"
        "nothing itself.",
        epilog="examples:\n  python -m app nodes\n  python -m app nodes --watch --service orders",
    )
    nodes.add_argument(
        "--watch", action="store_true", help="then follow joins, changes and leaves (Ctrl-C stops)"
    )
    nodes.add_argument("--service", metavar="NAME", help="only this service's instances")


async def run(settings: Settings, args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    async with open_brokers(settings, redis=needs_redis(settings), attach=True) as brokers:
        try:
            kv = await brokers.js.key_value(settings.discovery_bucket)
        except (BucketNotFoundError, NotFoundError):
            print(
                f"no discovery bucket {settings.discovery_bucket!r}: no instance ran against this "
                "broker; start one with python -m app",
                file=out,
            )
            return 1
        watcher = await kv.watchall()
        known: dict[str, NodeInfo] = {}
        async for entry in watcher:  # every live key, then None
            if entry is None:
                break
            node = _node(entry)
            if node is not None and _shown(node, args.service):
                known[entry.key] = node
        await _table(list(known.values()), out)
        if not args.watch:
            await watcher.stop()  # type: ignore[no-untyped-call]
            return 0
        _say(out, f"\nwatching {settings.discovery_bucket} (Ctrl-C to stop)")
        try:
            async for entry in watcher:
                if entry is not None:
                    _event(entry, known, args.service, out)
        finally:
            await watcher.stop()  # type: ignore[no-untyped-call]
    return 0


def _node(entry: KeyValue.Entry) -> NodeInfo | None:
    if entry.operation in ("DEL", "PURGE") or not entry.value:
        return None
    try:
        return NodeInfo.model_validate_json(entry.value)
    except ValidationError:
        return None  # not a node record (another tool's key): not ours to show


def _shown(node: NodeInfo, service: str | None) -> bool:
    return service is None or node.service == service


def _event(
    entry: KeyValue.Entry, known: dict[str, NodeInfo], service: str | None, out: TextIO
) -> None:
    now = datetime.now(UTC).strftime("%H:%M:%S")
    node = _node(entry)
    if node is None:
        gone = known.pop(entry.key, None)
        if gone is not None:
            why = "expired: crashed or cut off" if entry.operation == "PURGE" else "left"
            print(
                f"{now} left    {gone.service} {gone.node_id} {gone.address} ({why})",
                file=out,
                flush=True,
            )
        return
    if not _shown(node, service):
        return
    before = known.get(entry.key)
    known[entry.key] = node
    if before is None:
        print(
            f"{now} joined  {node.service} {node.node_id} {node.address} {node.version}",
            file=out,
            flush=True,
        )
    elif not before.same_apart_from_last_seen(node):
        _say(out, f"{now} changed {node.service} {node.node_id} {node.metadata}")


async def _table(nodes: list[NodeInfo], out: TextIO) -> None:
    nodes.sort(key=lambda n: (n.service, n.started_at))
    async with httpx.AsyncClient(timeout=READY_TIMEOUT) as http:
        ready = await asyncio.gather(*(_ready(http, node) for node in nodes))
    now = datetime.now(UTC)
    rows = [
        (n.service, n.node_id, n.address, n.version, _uptime(now - n.started_at), r)
        for n, r in zip(nodes, ready, strict=True)
    ]
    print_table(COLUMNS, rows, out)
    print(f"{len(nodes)} instance{'s' if len(nodes) != 1 else ''}", file=out, flush=True)


async def _ready(http: httpx.AsyncClient, node: NodeInfo) -> str:
    try:
        response = await http.get(f"{node.address.rstrip('/')}/readyz")
    except httpx.HTTPError:
        return "?"
    return "yes" if response.status_code == 200 else f"no ({response.status_code})"


def _uptime(age: timedelta) -> str:
    seconds = int(age.total_seconds())
    hours, rest = divmod(max(seconds, 0), 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


def print_table(columns: Sequence[str], rows: Sequence[Sequence[object]], out: TextIO) -> None:
    """`rows` under `columns`, each column as wide as its widest cell (`dlq list` prints so too)."""
    widths = [max(len(str(row[i])) for row in [columns, *rows]) for i in range(len(columns))]
    for row in [columns, *rows]:
        cells = (str(cell).ljust(width) for cell, width in zip(row, widths, strict=True))
        print("  ".join(cells).rstrip(), file=out)


def _say(out: TextIO, text: str) -> None:
    print(text, file=out, flush=True)
