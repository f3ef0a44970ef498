"""The checker: the whole history against what the system holds once it has healed.

It knows the example's promises: an order answered 202 exists and is confirmed; no order exists
that was refused or never asked for, or twice for one key; an order's `paid` is the sum of its
distinct payment keys answered 202, plus possibly some indeterminate ones; no 5xx but 503; no
dead letter; discovery converges; nothing is left running; memory stays bounded. With a payment
timeout, an order may end cancelled instead of confirmed, but never one with a payment answered
202 or applied.

Reads: an order answered 202 is found by every read that starts after the answer, and its
status never goes back (pending, then confirmed or cancelled), nor its `paid` down.

The chaos domain's effects, one line per execution (app/chaos/domain.py): a charge answered 202
runs once, one refused never, an indeterminate one at most once; a step answered 202 runs at
least once; a reminder fires once (or not at all if someone tried to cancel it), never before
its time (the client's send plus the delay), and never after a cancel that answered True;
a batch's charges (`publish_many`) each run once; a step's key keeps in the stream the order
its steps were answered in (the outbox's per-key commit order); a QoS 0 ping runs at most once,
the loss counter counts every ping sent while its instance was cut from the brokers and no
more than the pings that never ran, and pings sent in calm windows arrive (at least
`MIN_PINGS`); the lease's holders never overlap
(each token's lines are one unbroken run, and tokens grow). A QoS 2 handler may run twice
only within the bounds docs/qos.md states: its first run's process was killed, or it lost the
claim store for longer than the claim's stale time (paused, cut off, or the store itself away)
between the two runs. Such runs are counted, not hidden.

Liveness: an instance that no fault is on (or was on within the grace) answers /healthz; one
silent for `SILENT` seconds or more was stalled by something else (hostile traffic, a stuck loop).

Progress: judged over the fault-free windows (a grace after every healed fault), a window must
see at least one operation answered 2xx and a share of determinate operations of at least
`MIN_DETERMINATE`: a run where every answer is a 503 fails.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from app.chaos.history import Operation

MEMORY_GROWTH = 64 * 1024 * 1024
MIN_DETERMINATE = 0.6
"""The least share of operations, among those inside a fault-free window, answered 2xx or 4xx."""
GRACE = 3.0
"""Seconds after a fault heals before the window after it is judged (reconnects, elections)."""
SILENT = 3.0
"""Seconds an instance no fault is on may go without answering /healthz (liveness)."""
MIN_WINDOW = 2.0
"""A fault-free stretch shorter than this, after its grace, is not judged."""
EARLY = 0.01
"""A reminder firing this much before its time is early (the wall clock's resolution here)."""
CUTS_AN_INSTANCE = frozenset(
    {"instance-pause", "net-cut", "net-oneway", "net-latency", "net-broker"}
)
"""Faults on an instance's lane that keep it from renewing its claims (not a drain, which
lets its handlers finish, nor a cut from the database alone)."""
STATUS_RANK = {"pending": 0, "confirmed": 1, "cancelled": 1}
MIN_PINGS = 0.9
"""The least share of QoS 0 pings answered 202 in a fault-free window that must arrive."""
DISCONNECTS = frozenset({"net-cut", "net-broker"})
"""Faults that close an instance's broker connections: every QoS 0 publish then is counted."""
NOTICED = 0.3
"""Seconds after such a cut before a publish is sure to see the connection gone."""
SAMPLED = 2.0
"""Counters are read every second: an incarnation ending sooner after a loss may not show it."""
ENDS_AN_INCARNATION = frozenset({"instance-kill", "instance-drain", "config-lease-ttl"})


@dataclass(frozen=True, slots=True)
class StoredOrder:
    order_id: str
    sku: str
    status: str
    paid: int = 0
    payments: tuple[str, ...] = ()


@dataclass(slots=True)
class Observed:
    """What the system holds after healing."""

    orders: dict[str, StoredOrder]  # every record of the orders bucket, tombstones included
    dead_letters: list[str] = field(default_factory=list)  # those of the poison fault aside
    dead_rows: list[str] = field(default_factory=list)  # outbox rows set aside, poison aside
    unsent_rows: list[str] = field(default_factory=list)  # outbox rows not sent after healing
    discovery_seconds: float | None = 0.0  # last heal to every view right; None: never
    node_ttl: float = 3.0
    leftovers: list[str] = field(default_factory=list)  # processes alive after teardown
    rss_growth: dict[str, int] = field(default_factory=dict)  # instance -> bytes since warm-up
    cancelling: bool = False  # APP_EXAMPLE_PAYMENT_TIMEOUT set: unpaid orders are cancelled
    effects: list[dict[str, Any]] = field(default_factory=list)  # the chaos domain's lines
    faults: list[FaultSpan] = field(default_factory=list)  # as inflicted, on the clients' clock
    t0: float = 0.0  # time.monotonic() at the clients' time 0, for the effects' times (`t`)
    clients_until: float | None = None  # when the clients stopped; None: progress not judged
    stale: float = 2.0  # a QoS 2 claim's stale time (APP_ACK_WAIT)
    store: str = "broker"  # the lane of the claim store: broker or valkey
    judged: list[Window] = field(default_factory=list)  # filled by `check`: the windows judged
    poisoned: int = 0  # dead letters of the poison fault (expected, not violations)
    stream_steps: list[str] | None = None  # the step ids in the stream's order; None: unread
    qos0_lost: float | None = None  # the instances' qosmesh.qos0.lost, summed; None: unread
    health: dict[str, list[tuple[float, bool]]] = field(default_factory=dict)
    """Per instance, each second: (clients' time, whether /healthz answered 200 within 1 s)."""


@dataclass(frozen=True, slots=True)
class FaultSpan:
    """A fault as it was inflicted: from its start until it was healed (a restarted process
    listening again), in seconds on the clients' clock."""

    kind: str
    target: str
    start: float
    end: float
    lane: str  # instance `i<k>`, `broker`, `valkey` or `postgres`
    after: float = 0.0
    """Seconds its effect outlasts the heal: what a slowed link carried before the heal still
    arrives up to a round trip (two delays) later, and a claim taken over it is that old."""

    @property
    def seconds(self) -> float:
        return self.end - self.start


@dataclass(slots=True)
class Window:
    start: float
    end: float
    operations: int = 0
    determinate: int = 0
    ok: int = 0

    @property
    def share(self) -> float:
        return self.determinate / self.operations if self.operations else 0.0


@dataclass(frozen=True, slots=True)
class Violation:
    invariant: str
    detail: str
    operations: tuple[Operation, ...] = ()

    def describe(self) -> str:
        lines = [f"{self.invariant}: {self.detail}"]
        lines += [f"  {op.as_json()}" for op in self.operations]
        return "\n".join(lines)


def check(operations: Iterable[Operation], observed: Observed) -> list[Violation]:
    """Every violation, in the order the invariants are listed in the module docstring."""
    ops = list(operations)
    return [
        *_placed(ops, observed),
        *_paid(ops, observed),
        *_reads(ops),
        *_charges(ops, observed),
        *_steps(ops, observed),
        *_order(ops, observed),
        *_pings(ops, observed),
        *_reminders(ops, observed),
        *_lease(observed),
        *_server_errors(ops),
        *_liveness(observed),
        *_progress(ops, observed),
        *_system(observed),
    ]


def _placed(ops: list[Operation], observed: Observed) -> Iterable[Violation]:
    places = {op.key: op for op in ops if op.kind == "place"}
    live = [order for order in observed.orders.values() if order.status != "withdrawn"]
    settled = {"confirmed", "cancelled"} if observed.cancelling else {"confirmed"}
    for op in places.values():
        if op.outcome != "ok":
            continue
        order = observed.orders.get(op.order_id or "")
        if order is None or order.status not in settled or order.sku != op.key:
            state = "missing" if order is None else f"{order.status} ({order.sku})"
            yield Violation("confirmed", f"order {op.order_id} answered 202 is {state}", (op,))
    by_key: dict[str, list[StoredOrder]] = defaultdict(list)
    for order in live:
        by_key[order.sku].append(order)
    for key, orders in by_key.items():
        placed = places.get(key)
        ids = ", ".join(sorted(order.order_id for order in orders))
        if placed is None:
            yield Violation("unasked", f"order(s) {ids} of key {key} that no client placed")
        elif placed.outcome == "failed":
            yield Violation("unasked", f"order(s) {ids} exist for a refused command", (placed,))
        elif len(orders) > 1:
            yield Violation("unasked", f"key {key} made {len(orders)} orders: {ids}", (placed,))
        elif placed.outcome == "ok" and orders[0].order_id != placed.order_id:
            answered = placed.order_id
            yield Violation("unasked", f"key {key} made {ids}, answered {answered}", (placed,))


def _paid(ops: list[Operation], observed: Observed) -> Iterable[Violation]:
    pays: dict[tuple[str, str], Operation] = {}
    for op in ops:
        if op.kind == "pay" and op.order_id is not None:
            pays[(op.order_id, op.key)] = op
    by_order: dict[str, list[Operation]] = defaultdict(list)
    for (order_id, _), op in pays.items():
        by_order[order_id].append(op)
    for order_id in set(by_order) | set(observed.orders):
        order = observed.orders.get(order_id)
        applied = list(order.payments) if order is not None else []
        shown = tuple(by_order.get(order_id, ()))
        if len(set(applied)) != len(applied):
            yield Violation("paid", f"order {order_id} applied a payment twice: {applied}", shown)
        for key in applied:
            sent = pays.get((order_id, key))
            if sent is None or sent.outcome == "failed":
                why = "no client sent" if sent is None else "was refused"
                yield Violation("paid", f"order {order_id} has payment {key} that {why}", shown)
        for op in by_order.get(order_id, ()):
            if op.outcome == "ok" and op.key not in applied:
                yield Violation("paid", f"order {order_id} lacks payment {op.key} (202)", (op,))
        answered = any(op.outcome == "ok" for op in by_order.get(order_id, ()))
        if order is not None and order.status == "cancelled" and (order.paid or answered):
            detail = f"order {order_id} was cancelled, paid {order.paid}"
            yield Violation("cancelled", detail, shown)
        if order is not None:
            expected = sum(
                pays[(order_id, key)].amount for key in applied if (order_id, key) in pays
            )
            if order.paid != expected:
                detail = f"order {order_id} paid {order.paid}, its payments sum to {expected}"
                yield Violation("paid", detail, shown)


def _server_errors(ops: list[Operation]) -> Iterable[Violation]:
    for op in ops:
        for attempt in op.attempts:
            if attempt.status is not None and attempt.status >= 500 and attempt.status != 503:
                detail = f"instance {attempt.instance} answered {attempt.status}"
                yield Violation("5xx", detail, (op,))
                break


def _system(observed: Observed) -> Iterable[Violation]:
    if observed.dead_letters:
        yield Violation("dead-letters", f"dead letters: {observed.dead_letters[:10]}")
    if observed.dead_rows:
        yield Violation("outbox", f"outbox rows set aside as dead: {observed.dead_rows[:10]}")
    if observed.unsent_rows:
        detail = f"{len(observed.unsent_rows)} outbox rows never sent: {observed.unsent_rows[:10]}"
        yield Violation("outbox", detail)
    bound = observed.node_ttl + 1
    if observed.discovery_seconds is None or observed.discovery_seconds > bound:
        took = observed.discovery_seconds
        shown = "never" if took is None else f"in {took:.1f}s"
        yield Violation("discovery", f"views converged {shown}, bound {bound:.1f}s")
    if observed.leftovers:
        yield Violation("leftovers", f"still running: {observed.leftovers}")
    for instance, grown in observed.rss_growth.items():
        if grown > MEMORY_GROWTH:
            yield Violation("memory", f"{instance} grew {grown / 2**20:.0f} MiB after warm-up")


def _reads(ops: list[Operation]) -> Iterable[Violation]:
    placed = {op.order_id: op for op in ops if op.kind == "place" and op.outcome == "ok"}
    reads: dict[str, list[Operation]] = defaultdict(list)
    for op in ops:
        if op.kind == "read" and op.order_id is not None and op.attempts:
            reads[op.order_id].append(op)
    for order_id, seen in reads.items():
        place = placed.get(order_id)
        for op in seen:
            answered = place is not None and place.attempts[-1].end <= op.attempts[-1].start
            if answered and op.attempts[-1].status == 404:
                yield Violation("reads", f"order {order_id} answered 202, then not found", (op,))
        found = sorted(
            (op for op in seen if op.outcome == "ok" and op.answer),
            key=lambda op: op.attempts[-1].end,
        )
        for earlier, later in itertools.pairwise(found):
            if earlier.attempts[-1].end > later.attempts[-1].start:
                continue  # the two overlapped: either order is fine
            a, b = earlier.answer or {}, later.answer or {}
            back = STATUS_RANK.get(b.get("status", ""), 0) < STATUS_RANK.get(a.get("status", ""), 0)
            if back or b.get("paid", 0) < a.get("paid", 0):
                detail = (
                    f"order {order_id} read {a.get('status')} paid {a.get('paid')}, then "
                    f"{b.get('status')} paid {b.get('paid')}"
                )
                yield Violation("reads", detail, (earlier, later))


def _runs(observed: Observed, kind: str) -> dict[str, list[dict[str, Any]]]:
    runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for line in observed.effects:
        if line.get("k") == kind:
            runs[str(line.get("id"))].append(line)
    for lines in runs.values():
        lines.sort(key=lambda line: float(line["t"]))
    return runs


def excused(first: dict[str, Any], second: dict[str, Any], observed: Observed) -> str | None:
    """Why a QoS 2 handler may have run twice (`first`, then `second`), by the bounds
    docs/qos.md states; None when nothing explains it."""
    since = float(first["t"]) - observed.t0
    until = float(second["t"]) - observed.t0
    lane = f"i{first['i']}"
    # Either runner may have held the claim while it could not renew it: the first, whose done
    # mark never came, or the second, whose handler ran on when it could act again, after its
    # claim had been taken over and the handler run elsewhere.
    runners = {lane, f"i{second['i']}"}
    for fault in observed.faults:
        if fault.end + fault.after < since or fault.start > until:
            continue
        if fault.lane == lane and fault.kind == "instance-kill":
            return f"{lane} was killed at {fault.start:.1f}s"
        cut_off = (fault.lane in runners and fault.kind in CUTS_AN_INSTANCE) or (
            fault.lane == observed.store
        )
        # A restarted store recovers its streams after it listens again; any cut costs the
        # renewal in flight. Latency holds every renewal past the ack timeouts.
        recovery = 1.0 if fault.kind.endswith(("kill", "restart", "disk")) else 0.5
        long_enough = fault.seconds + recovery >= observed.stale or fault.kind == "net-latency"
        if cut_off and long_enough:
            return f"{fault.kind} {fault.target} for {fault.seconds:.1f}s at {fault.start:.1f}s"
    return None


def _once(
    invariant: str,
    ops: dict[str, Operation],
    runs: dict[str, list[dict[str, Any]]],
    observed: Observed,
) -> Iterable[Violation]:
    for key, lines in runs.items():
        op = ops.get(key)
        if op is None or op.outcome == "failed":
            why = "no client sent it" if op is None else "it was refused"
            yield Violation(invariant, f"{key} ran though {why}", (op,) if op else ())
            continue
        for first, again in itertools.pairwise(lines):
            reason = excused(first, again, observed)
            if reason is None:
                detail = (
                    f"{key} ran {len(lines)} times (i{first['i']} at "
                    f"{float(first['t']) - observed.t0:.2f}s, then i{again['i']} at "
                    f"{float(again['t']) - observed.t0:.2f}s) with no fault to explain it"
                )
                yield Violation(invariant, detail, (op,))
                break


def duplicates(observed: Observed) -> dict[str, str]:
    """The QoS 2 runs beyond the first that a fault explains: message id -> why."""
    found: dict[str, str] = {}
    for kind in ("charge", "fire"):
        for key, lines in _runs(observed, kind).items():
            for first, again in itertools.pairwise(lines):
                reason = excused(first, again, observed)
                if reason is not None:
                    found[key] = reason
    return found


def _charges(ops: list[Operation], observed: Observed) -> Iterable[Violation]:
    charges = {op.key: op for op in ops if op.kind == "charge"}
    charges |= {f"{op.key}-{n}": op for op in ops if op.kind == "batch" for n in range(op.n)}
    runs = _runs(observed, "charge")
    yield from _once("qos2-once", charges, runs, observed)
    for key, op in charges.items():
        if op.outcome == "ok" and key not in runs:
            yield Violation("qos2-once", f"charge {key} answered 202 never ran", (op,))


def _steps(ops: list[Operation], observed: Observed) -> Iterable[Violation]:
    steps = {op.key: op for op in ops if op.kind == "step"}
    runs = _runs(observed, "step")
    for key, op in steps.items():
        if op.outcome == "ok" and key not in runs:
            yield Violation("qos1-at-least-once", f"step {key} answered 202 never ran", (op,))
    for key, lines in runs.items():
        sent = steps.get(key)
        if sent is None or sent.outcome == "failed":
            why = "no client sent it" if sent is None else "it was refused"
            yield Violation("qos1-at-least-once", f"step {key} ran though {why}")
        elif any(line.get("n") != sent.n or line.get("key") != sent.ref for line in lines):
            yield Violation("qos1-at-least-once", f"step {key} ran with another body", (sent,))


def _reminders(ops: list[Operation], observed: Observed) -> Iterable[Violation]:
    reminders = {op.key: op for op in ops if op.kind == "remind"}
    runs = _runs(observed, "fire")
    cancelled: dict[str, Operation] = {}
    for op in ops:
        said_true = (op.answer or {}).get("cancelled") is True
        if op.kind == "cancel" and op.ref is not None and op.outcome == "ok" and said_true:
            cancelled[op.ref] = op
    yield from _once("delayed-once", reminders, runs, observed)
    for key, lines in runs.items():
        sent = reminders.get(key)
        if sent is not None and sent.attempts:
            # Due no sooner than `delay` after the first try was sent, on the host's clock.
            due = sent.attempts[0].start + sent.delay
            early = due - (float(lines[0]["t"]) - observed.t0)
            if early > EARLY:
                detail = f"reminder {key} fired {early:.3f}s before its time"
                yield Violation("delayed-early", detail, (sent,))
        if key in cancelled:
            detail = f"reminder {key} fired though its cancel answered True"
            yield Violation("cancel", detail, (cancelled[key],))
    # A cancel that was not answered True may still have taken the message back (its answer
    # lost, a retry then told it was unknown): only a reminder nobody tried to cancel must fire.
    tried = {op.ref for op in ops if op.kind == "cancel" and op.attempts}
    for key, op in reminders.items():
        if op.outcome == "ok" and key not in runs and key not in tried:
            yield Violation("delayed-once", f"reminder {key} answered 202 never fired", (op,))


def _order(ops: list[Operation], observed: Observed) -> Iterable[Violation]:
    """A key's steps answered 202 one after the other are in the stream in that order (the
    first copy of each: a relay that sent a row twice may add a later one)."""
    if observed.stream_steps is None:
        return
    first: dict[str, int] = {}
    for position, message_id in enumerate(observed.stream_steps):
        first.setdefault(message_id, position)
    by_key: dict[str, list[Operation]] = defaultdict(list)
    for op in ops:
        if op.kind == "step" and op.ref is not None and op.outcome == "ok" and op.key in first:
            by_key[op.ref].append(op)
    for key, steps in by_key.items():
        steps.sort(key=lambda op: op.n)
        for earlier, later in itertools.pairwise(steps):
            if first[later.key] < first[earlier.key]:
                detail = (
                    f"key {key}: step {later.n} is in the stream before step {earlier.n}, "
                    "which was answered 202 before it was sent"
                )
                yield Violation("order", detail, (earlier, later))
                break


def _pings(ops: list[Operation], observed: Observed) -> Iterable[Violation]:
    pings = {op.key: op for op in ops if op.kind == "ping"}
    runs = _runs(observed, "ping")
    for key, lines in runs.items():
        op = pings.get(key)
        if op is None or op.outcome == "failed":
            why = "no client sent it" if op is None else "it was refused"
            yield Violation("qos0", f"ping {key} arrived though {why}", (op,) if op else ())
        elif len(lines) > 1:
            yield Violation("qos0", f"ping {key} arrived {len(lines)} times", (op,))
    answered = [op for op in pings.values() if op.outcome == "ok"]
    missing = sum(1 for op in answered if op.key not in runs)
    cut = [op for op in answered if _sent_while_cut(op, observed.faults)]
    if observed.qos0_lost is not None:
        if observed.qos0_lost > missing:
            detail = f"{observed.qos0_lost:g} QoS 0 losses counted, but only {missing} pings lost"
            yield Violation("qos0", detail)
        if observed.qos0_lost < len(cut):
            detail = (
                f"{len(cut)} pings were sent while their instance was cut from the brokers, "
                f"but only {observed.qos0_lost:g} losses were counted"
            )
            yield Violation("qos0", detail, tuple(cut[:3]))
    calm = [op for op in answered if _in_windows(op, windows(observed))]
    arrived = sum(1 for op in calm if op.key in runs)
    if calm and arrived < MIN_PINGS * len(calm):
        detail = f"{arrived} of {len(calm)} pings sent in fault-free windows arrived"
        yield Violation("qos0", detail)


def _sent_while_cut(op: Operation, faults: list[FaultSpan]) -> bool:
    """Whether the attempt answered 202 was sent while its instance's broker links were down
    (and noticed), and its incarnation lived on long enough for the counter to be read."""
    last = op.attempts[-1]
    lane = f"i{last.instance}"
    cut = any(
        f.lane == lane
        and f.kind in DISCONNECTS
        and f.start + NOTICED <= last.start
        and last.end <= f.end
        for f in faults
    )
    ended = any(
        f.lane == lane
        and f.kind in ENDS_AN_INCARNATION
        and last.start <= f.start
        and f.start - last.end < SAMPLED
        for f in faults
    )
    return cut and not ended


def _in_windows(op: Operation, calm: list[Window]) -> bool:
    if not op.attempts:
        return False
    return any(w.start <= op.attempts[0].start and op.attempts[-1].end <= w.end for w in calm)


def _lease(observed: Observed) -> Iterable[Violation]:
    """Each token's lines form one unbroken run, and the runs' tokens grow: no two holders
    ever acted at once."""
    lines = sorted(
        (line for line in observed.effects if line.get("k") == "lease"),
        key=lambda line: float(line["t"]),
    )
    finished: set[int] = set()
    current: dict[str, Any] | None = None
    for line in lines:
        token = int(line["token"])
        if current is not None and token != int(current["token"]):
            finished.add(int(current["token"]))
            if token in finished or token < int(current["token"]):
                at = float(line["t"]) - observed.t0
                detail = (
                    f"i{line['i']} acted with token {token} at {at:.2f}s, after "
                    f"i{current['i']} acted with token {current['token']}"
                )
                yield Violation("lease", detail)
                return
        current = line


def windows(observed: Observed) -> list[Window]:
    """The fault-free stretches of the run, each starting a grace after a fault healed, the
    first a grace after the start (a system just started serves its first requests slowly on a
    loaded machine: a 2.6 s stretch from 0 s saw none answered while the machine ran other
    tests)."""
    if observed.clients_until is None:
        return []
    busy = sorted((fault.start, fault.end + GRACE) for fault in observed.faults)
    found: list[Window] = []
    free_from = GRACE
    for start, end in busy:
        if start - free_from >= MIN_WINDOW:
            found.append(Window(free_from, start))
        free_from = max(free_from, end)
    if observed.clients_until - free_from >= MIN_WINDOW:
        found.append(Window(free_from, observed.clients_until))
    return found


def _progress(ops: list[Operation], observed: Observed) -> Iterable[Violation]:
    if observed.clients_until is None:
        return
    observed.judged = judged = windows(observed)
    if not judged:
        yield Violation("progress", "no fault-free window to judge progress in")
    for window in judged:
        for op in ops:
            inside = op.attempts and window.start <= op.attempts[0].start
            if inside and op.attempts[-1].end <= window.end:
                window.operations += 1
                window.determinate += op.outcome != "indeterminate"
                window.ok += op.outcome == "ok"
        span = f"{window.start:.1f}-{window.end:.1f}s"
        if window.ok == 0:
            yield Violation("progress", f"no operation succeeded in the fault-free {span}")
        elif window.share < MIN_DETERMINATE:
            detail = (
                f"{window.determinate} of {window.operations} operations determinate in the "
                f"fault-free {span}, less than {MIN_DETERMINATE:.0%}"
            )
            yield Violation("progress", detail)


def _liveness(observed: Observed) -> Iterable[Violation]:
    for name, samples in observed.health.items():
        mine = [f for f in observed.faults if f.lane == name]
        silent_since: float | None = None
        for at, answered in samples:
            excused = any(f.start <= at <= f.end + GRACE for f in mine)
            if answered or excused:
                silent_since = None
                continue
            if silent_since is None:
                silent_since = at
            elif at - silent_since >= SILENT:
                detail = (
                    f"{name} did not answer /healthz from {silent_since:.1f}s to {at:.1f}s "
                    "with no fault on it"
                )
                yield Violation("liveness", detail)
                break
