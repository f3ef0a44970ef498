"""One schedule from start to verdict: start the system, run the clients and the nemesis
together, let it heal, check the history, report."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import httpx
import nats.errors

from app.chaos import history
from app.chaos.checker import Observed, StoredOrder, Violation, check
from app.chaos.history import Operation
from app.chaos.schedule import Fault, Schedule
from app.chaos.system import ChaosError, System
from app.chaos.workload import Load, drive

HEAL = 30.0  # how long the system gets, once the faults stop, to make every promise good
READ_ERRORS = (nats.errors.Error, httpx.HTTPError, OSError, TimeoutError)
"""What the harness's own reads of the system may meet while it heals."""
T = TypeVar("T")


@dataclass(slots=True)
class Report:
    schedule: Schedule
    history: Path
    seconds: float
    counts: dict[str, float] = field(default_factory=dict)
    violations: list[Violation] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def summary(self) -> str:
        counts = ", ".join(f"{name} {value:g}" for name, value in self.counts.items())
        verdict = "ok" if self.ok else f"{len(self.violations)} VIOLATION(S)"
        return (
            f"seed {self.schedule.seed} {self.schedule.variant}: {verdict} in "
            f"{self.seconds:.0f}s; {counts}"
        )

    def describe(self) -> str:
        lines = [self.summary(), "schedule:"]
        lines += [f"  {fault.describe()}" for fault in self.schedule.faults]
        if self.violations:
            lines.append(f"first violated invariant (history: {self.history}):")
            lines.append(self.violations[0].describe())
            lines += [f"also: {v.invariant}: {v.detail}" for v in self.violations[1:10]]
        return "\n".join(lines)


async def run(
    schedule: Schedule, root: Path, load: Load | None = None, heal: float = HEAL
) -> Report:
    """Run `schedule` against a new system under `root`; the history goes to
    `root/history.jsonl`, the report to `root/report.json`."""
    began = time.monotonic()
    system = System(
        schedule.variant,
        root,
        instances=schedule.instances,
        payment_timeout=schedule.payment_timeout,
    )
    operations: list[Operation] = []
    errors: list[str] = []
    cancelling = schedule.payment_timeout is not None
    observed = Observed(orders={}, node_ttl=system.node_ttl, cancelling=cancelling)
    sampler: asyncio.Task[None] | None = None
    try:
        await system.start()
        sampler = asyncio.create_task(system.sample())
        started = time.monotonic()
        lanes = {fault.lane: asyncio.Lock() for fault in schedule.faults}
        nemesis = [
            asyncio.create_task(_at(started, fault, system, lanes[fault.lane]))
            for fault in schedule.faults
        ]
        operations = await drive(
            schedule.seed,
            [i.url for i in system.instances],
            started,
            started + schedule.window,
            load or Load(),
        )
        for outcome in await asyncio.gather(*nemesis, return_exceptions=True):
            if isinstance(outcome, BaseException):
                errors.append(f"fault not healed: {outcome!r}")
        healed = time.monotonic()
        errors += await system.ensure_running()
        observed.discovery_seconds = await _converged(system, healed, system.node_ttl + 5)
        observed.orders = await _settled(system, operations, healed + heal, cancelling)
        observed.dead_letters = await _read(system.dead_letters, "dead letters", 30.0)
        for instance in system.instances:
            if instance.warm_rss is not None and instance.rss is not None:
                observed.rss_growth[instance.name] = instance.rss - instance.warm_rss
    except ChaosError as exc:
        errors.append(str(exc))
    finally:
        if sampler is not None:
            sampler.cancel()
        await system.stop()
    observed.leftovers = system.leftovers()
    violations = [Violation("system", error) for error in errors] + check(operations, observed)
    report = Report(schedule, root / "history.jsonl", time.monotonic() - began)
    report.violations = violations
    report.counts = _counts(schedule, operations, system, observed)
    _save(report, operations)
    return report


def _save(report: Report, operations: list[Operation]) -> None:
    history.write(report.history, operations)
    summary = {
        "schedule": report.schedule.as_json(),
        "counts": report.counts,
        "violations": [f"{v.invariant}: {v.detail}" for v in report.violations],
    }
    (report.history.parent / "report.json").write_text(json.dumps(summary, indent=2))


async def _at(started: float, fault: Fault, system: System, lane: asyncio.Lock) -> None:
    """Inflict `fault` at its time, or once the fault before it on its lane has healed (an
    instance restart can take longer than planned)."""
    await asyncio.sleep(max(0.0, started + fault.at - time.monotonic()))
    async with lane:
        await system.inflict(fault)


async def _converged(system: System, healed: float, timeout: float) -> float | None:
    """Seconds from the last heal until every instance sees exactly the live ones."""
    while time.monotonic() - healed < timeout:
        with contextlib.suppress(Exception):
            live, views = await system.views()
            if all(view == live for view in views):
                return time.monotonic() - healed
        await asyncio.sleep(0.2)
    return None


async def _settled(
    system: System, operations: list[Operation], deadline: float, cancelling: bool
) -> dict[str, StoredOrder]:
    """The orders, once every confirmation and payment is in or the deadline passed. The
    harness's own reads ride out a broker still electing leaders, as a client would; one that
    never succeeds by the deadline is a finding, not a crash of the run."""
    while True:
        try:
            orders = await system.orders()
        except READ_ERRORS as exc:
            if time.monotonic() > deadline:
                raise ChaosError(f"the orders could not be read after healing: {exc!r}") from exc
            await asyncio.sleep(0.5)
            continue
        pending = [
            v
            for v in check(operations, Observed(orders, cancelling=cancelling))
            if v.invariant in ("confirmed", "paid")
        ]
        if not pending or time.monotonic() > deadline:
            return orders
        await asyncio.sleep(0.5)


async def _read(read: Callable[[], Awaitable[T]], what: str, patience: float) -> T:
    """`read()`, tried again for up to `patience` seconds while the system still heals."""
    give_up = time.monotonic() + patience
    while True:
        try:
            return await read()
        except READ_ERRORS as exc:
            if time.monotonic() > give_up:
                raise ChaosError(f"the {what} could not be read after healing: {exc!r}") from exc
            await asyncio.sleep(0.5)


def _counts(
    schedule: Schedule, operations: list[Operation], system: System, observed: Observed
) -> dict[str, float]:
    attempts = [a for op in operations for a in op.attempts]
    kinds = Counter(op.kind for op in operations)
    return {
        "operations": len(operations),
        "places": kinds["place"],
        "payments": kinds["pay"],
        "reads": kinds["read"],
        "faults": len(schedule.faults),
        "overlaps": schedule.overlaps(),
        "503s": sum(1 for a in attempts if a.status == 503),
        "no answer": sum(1 for a in attempts if a.status is None),
        "retries": len(attempts) - len(operations),
        "indeterminate": sum(1 for op in operations if op.outcome == "indeterminate"),
        "redeliveries": system.counter("qosmesh_redeliveries"),
        "dedupe hits": system.counter("qosmesh_dedupe_hits"),
        "cancelled": sum(1 for o in observed.orders.values() if o.status == "cancelled"),
        "409s": sum(1 for a in attempts if a.status == 409),
    }
