"""One schedule from start to verdict: start the system, run the clients and the nemesis
together, let it heal, check the history, report."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

import httpx
import nats.errors
import redis

from app.chaos import history
from app.chaos.checker import GRACE, FaultSpan, Observed, Violation, check, duplicates
from app.chaos.history import Operation
from app.chaos.schedule import CLOCK_KINDS, DISK_KINDS, Fault, Schedule
from app.chaos.system import ChaosError, System
from app.chaos.workload import Deadline, Load, drive

HEAL = 30.0  # how long the system gets, once the faults stop, to make every promise good
AFTER = {"broker-partition": 6.0}
"""Seconds a fault's effect outlasts its heal, by kind (net-latency: two of its delays). A
healed partition is followed by elections: the cut-off node comes back with a higher term, the
leaders it meets step down, and streams have no leader until new ones are elected (5.5 s
measured on a loaded host, seed 1851544881)."""
CALM = 4.0  # seconds the clients go on after the last fault's grace: a window always judged
POISON = "poison-"  # the message ids of the hostile faults' messages and rows
IN_FLIGHT = ("confirmed", "paid", "qos2-once", "qos1-at-least-once", "delayed-once", "outbox")
"""Invariants that may still be settling after the faults stop: waited for, up to HEAL."""
READ_ERRORS = (nats.errors.Error, httpx.HTTPError, OSError, TimeoutError)
"""What the harness's own reads of the system may meet while it heals."""
STREAM_ERRORS = (redis.RedisError,)
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
        clocks=any(fault.kind in CLOCK_KINDS for fault in schedule.faults),
        disks=any(fault.kind in DISK_KINDS for fault in schedule.faults),
    )
    operations: list[Operation] = []
    errors: list[str] = []
    cancelling = schedule.payment_timeout is not None
    observed = Observed(
        orders={},
        node_ttl=system.node_ttl,
        cancelling=cancelling,
        stale=system.ack_wait,
        store="valkey" if schedule.variant == "redis" else "broker",
    )
    sampler: asyncio.Task[None] | None = None
    try:
        await system.start()
        sampler = asyncio.create_task(system.sample())
        started = time.monotonic()
        observed.t0 = started
        lanes = {f"i{i.index}": asyncio.Lock() for i in system.instances}
        lanes |= {fault.lane: asyncio.Lock() for fault in schedule.faults}
        nemesis = [
            asyncio.create_task(_at(started, fault, system, lanes, observed.faults))
            for fault in schedule.faults
        ]
        deadline = Deadline(math.inf)
        clients = asyncio.create_task(
            drive(
                schedule.seed,
                [i.url for i in system.instances],
                started,
                deadline,
                load or Load(),
            )
        )
        for outcome in await asyncio.gather(*nemesis, return_exceptions=True):
            if isinstance(outcome, BaseException):
                errors.append(f"fault not healed: {outcome!r}")
        # The clients go on through the last fault's grace and a calm stretch after it.
        deadline.at = max(started + schedule.window, time.monotonic() + GRACE + CALM)
        operations = await clients
        observed.clients_until = time.monotonic() - started
        observed.health = {
            i.name: [(round(at - started, 3), ok) for at, ok in i.health if at >= started]
            for i in system.instances
        }
        healed = time.monotonic()
        errors += await system.ensure_running()
        observed.discovery_seconds = await _converged(system, healed, system.node_ttl + 5)
        await _settled(system, operations, observed, healed + heal)
        letters = await _read(system.dead_letters, "dead letters", 30.0)
        observed.dead_letters = [why for id_, why in letters if not id_.startswith(POISON)]
        observed.poisoned = len(letters) - len(observed.dead_letters)
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


async def _at(
    started: float,
    fault: Fault,
    system: System,
    lanes: dict[str, asyncio.Lock],
    spans: list[FaultSpan],
) -> None:
    """Inflict `fault` at its time, or once the fault before it on its lane has healed (an
    instance restart can take longer than planned), and note when it began and healed. A fault
    on the lease's holder is aimed when it starts (at instance 0 if none holds it)."""
    await asyncio.sleep(max(0.0, started + fault.at - time.monotonic()))
    aimed, kind = fault, fault.kind.removesuffix("-long")
    if fault.target == "holder":
        holder = await system.holder()
        kind = kind.replace("holder", "instance")
        aimed = replace(fault, kind=kind, target=f"i{holder or 0}")
    async with lanes[aimed.lane]:
        start = time.monotonic() - started
        await system.inflict(aimed)
        end = time.monotonic() - started
    lane = aimed.lane if aimed.lane != "holder" else aimed.target
    after = AFTER.get(kind, 0.0) if kind != "net-latency" else 2 * float(aimed.detail)
    spans.append(FaultSpan(kind, aimed.target, round(start, 3), round(end, 3), lane, after))


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
    system: System, operations: list[Operation], observed: Observed, deadline: float
) -> None:
    """Read the orders, the effects and the outbox into `observed`, once every confirmation,
    payment, effect and outbox row is in or the deadline passed. The harness's own reads ride
    out a broker still electing leaders, as a client would; one that never succeeds by the
    deadline is a finding, not a crash of the run."""
    while True:
        try:
            observed.orders = await system.orders()
            dead, unsent = await system.outbox()
        except READ_ERRORS as exc:
            if time.monotonic() > deadline:
                raise ChaosError(f"the orders could not be read after healing: {exc!r}") from exc
            await asyncio.sleep(0.5)
            continue
        observed.effects = system.effects()
        with contextlib.suppress(*READ_ERRORS, *STREAM_ERRORS):
            observed.stream_steps = await system.stream_ids("chaos.stepped")
        observed.qos0_lost = system.counter("qosmesh_qos0_lost")
        observed.dead_rows = [row for row in dead if not row.startswith(POISON)]
        observed.unsent_rows = [row for row in unsent if not row.startswith(POISON)]
        settling = replace(observed, clients_until=None)
        pending = [v for v in check(operations, settling) if v.invariant in IN_FLIGHT]
        if not pending or time.monotonic() > deadline:
            return
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
        "charges": kinds["charge"],
        "batches": kinds["batch"],
        "steps": kinds["step"],
        "steps in the stream": -1 if observed.stream_steps is None else len(observed.stream_steps),
        "pings": kinds["ping"],
        "QoS 0 losses counted": observed.qos0_lost or 0,
        "reminders": kinds["remind"],
        "cancels said True": sum(
            1 for op in operations if op.kind == "cancel" and (op.answer or {}).get("cancelled")
        ),
        "effects": len(observed.effects),
        "explained QoS 2 reruns": len(duplicates(observed)),
        "poison dead-lettered": observed.poisoned,
        "windows judged": len(observed.judged),
        "least determinate share": round(min((w.share for w in observed.judged), default=0), 3),
    }
