"""`python -m app.chaos`: run fault schedules and print a line per schedule (see --help)."""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

from app.chaos.run import Report, run
from app.chaos.schedule import VALKEY_KINDS, VARIANTS, Variant, kinds_of, plan
from app.testing.faults import FAKETIME, Disk


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m app.chaos",
        description="Run seeded fault schedules against real instances and brokers, check "
        "every history, print a line per schedule; exit 1 on any violation.",
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--seeds", type=int, help="run this many schedules (default 3)")
    which.add_argument("--seed", type=int, help="run this seed only (again, to replay it)")
    parser.add_argument("--minutes", type=float, help="run new schedules for this long")
    parser.add_argument(
        "--transport", choices=["jetstream", "redis"], help="only this QoS 1/2 transport"
    )
    parser.add_argument("--cluster", action="store_true", help="only the 3-node JetStream cluster")
    parser.add_argument("--window", type=float, default=30.0, help="seconds of faults per schedule")
    parser.add_argument("--cover", action="store_true", help="every fault kind once per schedule")
    parser.add_argument(
        "--kinds",
        type=lambda text: tuple(kind for kind in text.split(",") if kind),
        default=(),
        help="only these fault kinds, comma-separated (e.g. valkey-pause,config-lease-ttl)",
    )
    parser.add_argument(
        "--payment-timeout",
        type=float,
        help="APP_EXAMPLE_PAYMENT_TIMEOUT for the instances: unpaid orders are cancelled",
    )
    parser.add_argument("--out", type=Path, help="where histories and reports go (default: temp)")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="qosmesh-chaos-"))
    variants = _variants(args.transport, args.cluster)
    print(f"histories and reports under {out}", flush=True)
    if FAKETIME is None:
        print("clock faults skipped: libfaketime is not installed (apt-get install faketime)")
    why = Disk.available(out)
    args.tmpfs = why is None
    if why is not None:
        print(f"disk faults skipped: {why}")
    reports = asyncio.run(_run_all(args, variants, out))
    print(_table(reports))
    failed = [report for report in reports if not report.ok]
    for report in failed:
        print(report.describe())
    operations = sum(report.counts.get("operations", 0) for report in reports)
    print(f"{len(reports)} schedules, {operations:g} operations, {len(failed)} with violations")
    return 1 if failed else 0


def _variants(transport: str | None, cluster: bool) -> list[Variant]:
    if cluster:
        return ["cluster"]
    if transport == "redis":
        return ["redis"]
    if transport == "jetstream":
        return ["jetstream"]
    return list(VARIANTS)


async def _run_all(args: argparse.Namespace, variants: list[Variant], out: Path) -> list[Report]:
    reports: list[Report] = []
    deadline = time.monotonic() + args.minutes * 60 if args.minutes else None
    for n, (seed, variant) in enumerate(_seeds(args, variants)):
        if deadline is not None and time.monotonic() > deadline:
            break
        cover = args.cover or args.window <= 20
        schedule = plan(
            seed,
            variant,
            args.window,
            cover=cover,
            only=args.kinds,
            payment_timeout=args.payment_timeout,
            faketime=FAKETIME is not None,
            tmpfs=args.tmpfs,
        )
        report = await run(schedule, out / f"{n:04d}-{variant}-{seed}")
        reports.append(report)
        print(report.summary(), flush=True)
        with (out / "results.jsonl").open("a") as results:
            row = {"seed": seed, "variant": variant, "ok": report.ok, **report.counts}
            results.write(json.dumps(row) + "\n")
    return reports


def _seeds(args: argparse.Namespace, variants: list[Variant]) -> Iterator[tuple[int, Variant]]:
    if args.seed is not None:
        for variant in variants:
            yield args.seed, variant
        return
    base = random.randrange(1 << 31)  # noqa: S311 (a seed, printed with each schedule)
    count = args.seeds or (1 << 30 if args.minutes else 3)
    for n in range(count):
        yield base + n, variants[n % len(variants)]


def _table(reports: list[Report]) -> str:
    """Fault kinds x variants: schedules with the kind, and those with a violation."""
    runs: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for report in reports:
        for kind in {fault.kind for fault in report.schedule.faults}:
            cell = runs[(kind, report.schedule.variant)]
            cell[0] += 1
            cell[1] += 0 if report.ok else 1
    variants = sorted({report.schedule.variant for report in reports})
    lines = [
        "| fault kind | " + " | ".join(variants) + " |",
        "|---|" + "---|" * len(variants),
    ]
    for kind in (*kinds_of("jetstream"), *VALKEY_KINDS):
        cells = []
        for variant in variants:
            total, bad = runs.get((kind, variant), (0, 0))
            cells.append(f"{total} runs, {bad} violations" if total else "-")
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
