"""`python -m bench [--quick] [--json] [--only ROWS]`: start nats-server and Valkey on free
ports in a temp dir, run every row, print the table and regenerate docs/benchmarks.md."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import uvloop
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider

from app.brokers.embedded import NatsServer, ValkeyServer, find_binary, valkey_binary
from app.observability.instruments import keep_histograms_locally
from app.observability.setup import PrometheusReader
from bench.cases import discovery_rows, http_rows, nats_rows, redis_rows
from bench.cases.common import Env
from bench.report import Table, machine_info, render_markdown, render_text

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
NATS_SYNC = "2m"  # nats-server's own default; APP_NATS_SYNC's is `always` (docs/qos.md)
AREAS = ("qos0", "qos1", "inflight", "e2e", "qos2", "sync", "redis", "http", "discovery")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="few messages: a smoke run")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("--only", default="", help=f"comma-separated subset of {','.join(AREAS)}")
    parser.add_argument("--no-docs", action="store_true", help="leave docs/benchmarks.md alone")
    return parser.parse_args(argv)


def make_env(
    args: argparse.Namespace, nats: NatsServer, synced: NatsServer, valkey: ValkeyServer, tmp: Path
) -> Env:
    quick = args.quick
    return Env(
        nats_url=nats.url,
        nats_synced_url=synced.url,
        redis_url=valkey.url,
        tmp=tmp,
        messages=5_000 if quick else 50_000,
        slow_messages=1_000 if quick else 10_000,
        size=256,
        runs=1 if quick else 3,
        window=256,
        http_seconds=2 if quick else 10,
        http_clients=16,
        discovery_samples=5 if quick else 20,
    )


async def run_all(env: Env, pick: Callable[[str], bool]) -> list[Table]:
    tables = [
        Table(
            "Messaging (msg/s)",
            "qosmesh",
            "raw client",
            await nats_rows.rows(env, pick),
            peer_label="FastStream",
        ),
        Table(
            "Redis Streams (msg/s)",
            "qosmesh",
            "raw redis-py",
            await redis_rows.rows(env, pick),
            peer_label="FastStream",
        ),
        *await http_rows.tables(env, pick),
        Table("Discovery", "value", "-", await discovery_rows.rows(env, pick)),
    ]
    return [table for table in tables if table.rows]


def main(argv: list[str]) -> int:
    args = parse(argv)
    wanted = {name.strip() for name in args.only.split(",") if name.strip()}
    unknown = wanted - set(AREAS)
    if unknown:
        print(f"unknown rows: {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2

    def pick(name: str) -> bool:
        return not wanted or name in wanted

    # The service's metrics set-up (tracing stays off: no tracer provider).
    metrics.set_meter_provider(MeterProvider(metric_readers=[PrometheusReader()]))
    keep_histograms_locally()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="qosmesh-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        # The messaging rows run on the server's default flush timer, as the raw clients'
        # baselines do; the sync rows price APP_NATS_SYNC=always against it.
        nats = NatsServer(tmp / "nats", sync=NATS_SYNC)
        synced = NatsServer(tmp / "nats-synced", sync="always")
        valkey = ValkeyServer(tmp / "valkey", extra_args=["--appendonly", "no"])
        nats.start()
        synced.start()
        valkey.start()
        try:
            env = make_env(args, nats, synced, valkey, tmp)
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                tables = runner.run(run_all(env, pick))
        finally:
            valkey.stop()
            synced.stop()
            nats.stop()
    machine = machine_info(find_binary("nats-server"), valkey_binary())
    machine["JetStream sync_interval"] = f"{NATS_SYNC} (the sync rows: always vs {NATS_SYNC})"
    machine["duration"] = f"{time.monotonic() - started:.0f} s"
    command = "python3 dev.py bench" + (" --quick" if args.quick else "")
    if args.json:
        payload = {
            "machine": machine,
            "tables": [
                {"title": t.title, "rows": [row.as_dict() for row in t.rows]} for t in tables
            ],
        }
        print(json.dumps(payload, indent=2))
    else:
        print(render_text(tables))
        print(" | ".join(f"{k}: {v}" for k, v in machine.items()))
    if not args.no_docs and not wanted:
        DOC.write_text(render_markdown(tables, machine, command))
        if not args.json:
            print(f"wrote {DOC.relative_to(ROOT)}")
    return 0
