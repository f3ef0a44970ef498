"""Result rows, the terminal table, and docs/benchmarks.md."""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def _ratio(ours: float, other: float | None, lower_better: bool) -> float | None:
    """How many times better `ours` is than `other` (above 1: ours is better)."""
    if other is None or not other or not ours:
        return None
    return other / ours if lower_better else ours / other


@dataclass(slots=True)
class Row:
    """One comparison in `unit` (higher is better unless `lower_better`): `ours` against `raw`
    (the bare client doing the same work), against `peer` (FastStream doing it) and, on the HTTP
    rows, against `outbox_peer` (FastStream with faststream-outbox: qosmesh's guarantee)."""

    name: str
    unit: str
    ours: float
    raw: float | None = None
    target: float | None = None  # on `ratio`
    lower_better: bool = False
    note: str = ""
    extra: dict[str, float] = field(default_factory=dict)
    peer: float | None = None
    peer_target: float | None = None  # on `peer_ratio`
    outbox_peer: float | None = None

    @property
    def ratio(self) -> float | None:
        return _ratio(self.ours, self.raw, self.lower_better)

    @property
    def peer_ratio(self) -> float | None:
        return _ratio(self.ours, self.peer, self.lower_better)

    @property
    def outbox_peer_ratio(self) -> float | None:
        return _ratio(self.ours, self.outbox_peer, self.lower_better)

    @property
    def met(self) -> bool | None:
        checks = [
            ratio >= target
            for ratio, target in ((self.ratio, self.target), (self.peer_ratio, self.peer_target))
            if ratio is not None and target is not None
        ]
        return all(checks) if checks else None

    def as_dict(self) -> dict[str, Any]:
        ratios = {
            "ratio": self.ratio,
            "peer_ratio": self.peer_ratio,
            "outbox_peer_ratio": self.outbox_peer_ratio,
        }
        return {**asdict(self), **ratios, "met": self.met}


@dataclass(slots=True)
class Table:
    title: str
    ours_label: str
    raw_label: str
    rows: list[Row]
    peer_label: str = ""  # a table without a peer column leaves it empty
    outbox_peer_label: str = ""  # likewise; only the HTTP table has one

    def _labels(self) -> list[str]:
        """The columns qosmesh is compared with, in order; `_compared` gives their values."""
        labels = [self.raw_label, self.peer_label, self.outbox_peer_label]
        return [label for label in labels if label]

    def _compared(self, row: Row) -> list[tuple[float | None, float | None]]:
        """Each compared column's value in `row`, and qosmesh's ratio to it."""
        columns = [
            (self.raw_label, row.raw, row.ratio),
            (self.peer_label, row.peer, row.peer_ratio),
            (self.outbox_peer_label, row.outbox_peer, row.outbox_peer_ratio),
        ]
        return [(value, ratio) for label, value, ratio in columns if label]

    def header(self) -> list[str]:
        labels = self._labels()
        if len(labels) == 1:
            return ["row", "unit", self.ours_label, self.raw_label, "ratio", "target", "note"]
        ratios = [f"vs {label}" for label in labels]
        return ["row", "unit", self.ours_label, *labels, *ratios, "target", "note"]

    def cells(self, row: Row) -> list[str]:
        verdict = {True: "yes", False: "NO", None: ""}[row.met]
        targets = []
        if row.target is not None:
            targets.append(
                f">= {row.target:g}x" + (f" {self.raw_label}" if self.peer_label else "")
            )
        if row.peer_target is not None:
            targets.append(f">= {row.peer_target:g}x {self.peer_label}")
        target = f"{', '.join(targets)} {verdict}".strip()
        compared = self._compared(row)
        numbers = [_num(row.ours, row.unit), *(_num(value, row.unit) for value, _ in compared)]
        ratios = [_times(ratio) for _, ratio in compared]
        return [row.name, row.unit, *numbers, *ratios, target, row.note]


def _num(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "s":
        return f"{value:.3f}"
    if unit in ("%", "ms"):
        return f"{value:.1f}"
    return f"{value:,.0f}"


def _times(ratio: float | None) -> str:
    return f"{ratio:.2f}x" if ratio is not None else "-"


def render_text(tables: list[Table]) -> str:
    out: list[str] = []
    for table in tables:
        header = table.header()
        body = [table.cells(row) for row in table.rows]
        widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
        out.append(f"== {table.title}")
        for line in [header, *body]:
            out.append(
                "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True))
            )
        out.append("")
    return "\n".join(out)


def render_markdown(tables: list[Table], machine: dict[str, str], command: str) -> str:
    lines = [
        "# Benchmarks",
        "",
        "qosmesh measured beside the raw nats-py and redis-py clients, and beside FastStream",
        "(the peer column), doing the same work on the same machine in the same run. Absolute",
        "numbers drift on shared machines; the ratios are what to compare. Regenerated by",
        "`python3 dev.py bench`; do not edit by hand.",
        "Where the time goes and how the hot paths stay cheap: [performance.md](performance.md).",
        "",
        f"Command: `{command}`",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        *(f"| {key} | {value} |" for key, value in machine.items()),
        "",
    ]
    for table in tables:
        header = table.header()
        lines += [f"## {table.title}", "", "| " + " | ".join(header) + " |"]
        lines.append("|" + "---|" * len(header))
        lines += ["| " + " | ".join(table.cells(row)) + " |" for row in table.rows]
        lines.append("")
    lines += [
        "## How each row is measured",
        "",
        "- Servers: a fresh nats-server (JetStream, file store) and Valkey (no persistence) on",
        "  free loopback ports, started by the command. Every message row: median of 3 runs,",
        "  qosmesh, raw and the peer in turns, so a machine slowing down for a while weighs on",
        "  all of them.",
        "- The peer: FastStream (bench extra, installed into .venv-bench only), written to its",
        "  documented API: `broker.publish`, `JStream`, `PullSub(256)` and `StreamSub`",
        "  subscribers acking after the handler (`AckPolicy.NACK_ON_ERROR`), Redis publishes",
        "  through its pipeline option (bench/peers/faststream_messaging.py).",
        "- Router rows call `Bus.publish` with messages built beforehand (building a pydantic",
        "  message is the caller's cost, not the router's); a `Message` with a 256-character",
        "  `data` field. Raw rows send 256 bytes with no headers.",
        "- The process has the service's metrics set-up (an OpenTelemetry MeterProvider with the",
        "  Prometheus reader) and no tracer provider, except in the tracing comparison.",
        "- Many in flight: the router's `Bus.publish_many(messages, window=window)` (on Redis",
        "  it is `window` concurrent `publish` calls); raw is `js.publish_async` with",
        "  `publish_async_max_pending=window`, or one XADD pipeline per `window` messages.",
        "- End to end: publishing and consuming run at once; the clock stops at the last ack.",
        "  Raw consumers fetch batches of 256 from a durable pull consumer and ack each message.",
        "- HTTP: `POST /orders` on qosmesh (`bench.serve`: `create_app` with its defaults,",
        "  metrics on `/metrics`), on FastAPI + nats-py written by hand (bench/peers/http_raw.py)",
        "  and on FastAPI + FastStream (bench/peers/http_faststream.py), each a single uvicorn",
        "  process (uvloop, httptools) doing the same work on its own database of one",
        "  PostgreSQL: validate the body, insert the order, and get `OrderPlaced` to JetStream",
        "  (qosmesh: in the same transaction through its outbox, published by the relay; the",
        "  peers: published after the insert, awaiting the PubAck, as their users write it); a",
        "  pull consumer in the same process confirms the order with an UPDATE (qosmesh: in a",
        "  transaction with its inbox record) and acks after. Orders confirmed per second count",
        "  until no order is pending in the service's table. Load: wrk",
        "  (`-t1`, 16 connections; the in-repo bench/loadgen.py when wrk is missing), in rounds",
        "  alternating between the services, each waiting for all to go idle first; the",
        "  generator's ceiling against an endpoint that does nothing is printed beside them.",
        "  Tracing on: an SDK TracerProvider with a BatchSpanProcessor exporting to a no-op",
        "  exporter; off: no provider (spans are no-ops).",
        "- The outbox peer (the HTTP table's last column): FastAPI + FastStream +",
        "  faststream-outbox 0.19 (bench/peers/http_faststream_outbox.py), one uvicorn process",
        "  like the others, with the guarantee qosmesh's outbox gives: the order and its outbox",
        "  row in one SQLAlchemy transaction (`broker.publish(..., session=)` on its",
        "  `OutboxRouter`); an outbox subscriber, woken by LISTEN/NOTIFY and tuned as its",
        "  performance guide says for a busy idempotent queue, relays each row through a",
        "  JetStream publisher of FastStream's `NatsRouter` stacked on it, awaiting the PubAck,",
        "  with the message id as `Nats-Msg-Id`; a pull subscriber like the FastStream peer's",
        "  confirms the order.",
        "- Outbox latency: after the rounds, 300 orders one at a time (10 ms apart) on the idle",
        "  qosmesh service; each row's time from its insert to the broker's ack of its publish,",
        "  read off the outbox table.",
        "- Discovery: peers are in-process `KvDiscovery` instances with their own connections;",
        "  the CPU row runs the watcher in its own process and reads its CPU time.",
        "",
    ]
    return "\n".join(lines)


def _first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "unknown"
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


def machine_info(nats_bin: Path, valkey_bin: Path) -> dict[str, str]:
    cpu = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "CPU": cpu,
        "cores": str(os.cpu_count()),
        "OS": f"{platform.system()} {platform.release()}",
        "Python": platform.python_version(),
        "nats-server": _first_line([str(nats_bin), "--version"]),
        "valkey": _first_line([str(valkey_bin), "--version"]),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
