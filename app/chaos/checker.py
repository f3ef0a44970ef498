"""The checker: the whole history against what the system holds once it has healed.

It knows the example's promises: an order answered 202 exists and is confirmed; no order exists
that was refused or never asked for, or twice for one key; an order's `paid` is the sum of its
distinct payment keys answered 202, plus possibly some indeterminate ones; no 5xx but 503; no
dead letter; discovery converges; nothing is left running; memory stays bounded. With a payment
timeout, an order may end cancelled instead of confirmed, but never one with a payment answered
202 or applied.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from app.chaos.history import Operation

MEMORY_GROWTH = 64 * 1024 * 1024


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
    dead_letters: list[str] = field(default_factory=list)
    discovery_seconds: float | None = 0.0  # last heal to every view right; None: never
    node_ttl: float = 3.0
    leftovers: list[str] = field(default_factory=list)  # processes alive after teardown
    rss_growth: dict[str, int] = field(default_factory=dict)  # instance -> bytes since warm-up
    cancelling: bool = False  # APP_EXAMPLE_PAYMENT_TIMEOUT set: unpaid orders are cancelled


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
        *_server_errors(ops),
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
