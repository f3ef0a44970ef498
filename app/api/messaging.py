"""The numbers of the console's Messaging view: this instance's, or the whole service's, added
up from what every instance of the service reports about itself.

Each instance answers `/console/api/numbers` with its counters, its latency histograms' bucket
counts and its last minutes of samples (app/observability/history.py). The service's view is
made from those answers:

- counters (handled, duplicates, redeliveries, dead letters, QoS counters) are added up;
- a consumer the instances share (a competing consumer: one durable for the service) has one
  backlog, which every instance reads and reports: it is taken once (the largest reading, the
  freshest as often as not), never added up; the oldest unacked delivery is the oldest of all;
- latency percentiles come from the instances' bucket counts added together, never from
  percentiles averaged;
- charts line the instances' samples up on `history.EVERY`-second slots of the wall clock.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Literal

from pydantic import BaseModel, Field

from app.observability.history import EVERY
from app.observability.instruments import SECONDS_BUCKETS
from app.observability.snapshot import Snapshot

Scope = Literal["instance", "service"]


class ConsumerStats(BaseModel):
    consumer: str
    subject: str
    transport: str
    qos: int
    shared: bool = Field(
        default=True,
        description="one consumer for the whole service (competing); False: one per instance",
    )
    pending: float | None  # None: the transport reports no backlog for it
    oldest_unacked: float = 0.0  # seconds the oldest delivery held has waited
    handled: float  # acked after the handler; the page turns it into a rate
    duplicates: float
    redeliveries: float
    dead_letters: float


class QosCounters(BaseModel):
    qos0_lost: float
    publish_retries: float
    redeliveries: float
    dedupe_hits: dict[str, float]


class Latency(BaseModel):
    """Seconds; None when nothing was measured."""

    publish_p50: float | None = None
    publish_p99: float | None = None
    handler_p50: float | None = None
    handler_p99: float | None = None


class Charts(BaseModel):
    """Time series on shared slots: `t` in unix seconds, each series one value per slot (None
    where nothing was known)."""

    t: list[float] = Field(default_factory=list)
    handled_per_second: dict[str, list[float | None]] = Field(default_factory=dict)
    pending: dict[str, list[float | None]] = Field(default_factory=dict)
    oldest_unacked: dict[str, list[float | None]] = Field(default_factory=dict)
    dead_letters: dict[str, list[float | None]] = Field(default_factory=dict)
    publish_p99: list[float | None] = Field(default_factory=list)


class History(BaseModel):
    """One instance's samples, oldest first: `t` by its wall clock; counters cumulative."""

    t: list[float] = Field(default_factory=list)
    handled: dict[str, list[float]] = Field(default_factory=dict)
    pending: dict[str, list[float | None]] = Field(default_factory=dict)
    oldest_unacked: dict[str, list[float]] = Field(default_factory=dict)
    dead_letters: dict[str, list[float]] = Field(default_factory=dict)
    publish: list[list[int]] = Field(default_factory=list)


class Numbers(BaseModel):
    """What one instance reports about itself (`/console/api/numbers`)."""

    node_id: str
    consumers: list[ConsumerStats]
    qos: QosCounters
    bounds: list[float] = Field(default_factory=lambda: list(SECONDS_BUCKETS))
    publish: list[int] = Field(default_factory=list)  # bucket counts
    process: list[int] = Field(default_factory=list)
    history: History = Field(default_factory=History)


class Messaging(BaseModel):
    """The Messaging view: this instance's numbers, or the service's."""

    scope: Scope = "instance"
    instances: list[str] = Field(default_factory=list, description="node ids counted")
    missing: list[str] = Field(
        default_factory=list, description="instances of the service that did not answer"
    )
    consumers: list[ConsumerStats]
    qos: QosCounters
    latency: Latency = Field(default_factory=Latency)
    charts: Charts = Field(default_factory=Charts)
    age: float = 0.0  # seconds since the numbers were read (at most a second): for rates


Consumer = tuple[str, str, str, int, bool]
"""(name, subject, transport, qos, shared) of one consumer of this instance."""


def numbers(
    node_id: str, consumers: Sequence[Consumer], now: Snapshot, samples: Sequence[Snapshot]
) -> Numbers:
    """This instance's report, from its latest snapshot and its samples."""
    rows = [
        ConsumerStats(
            consumer=name,
            subject=subject,
            transport=transport,
            qos=qos,
            shared=shared,
            pending=now.pending.get(name),
            oldest_unacked=round(now.oldest_unacked.get(name, 0.0), 3),
            handled=now.handled(subject, "ack"),
            duplicates=now.handled(subject, "duplicate"),
            redeliveries=now.redeliveries.get(subject, 0),
            dead_letters=now.dead_letters.get(subject, 0),
        )
        for name, subject, transport, qos, shared in consumers
    ]
    history = History(
        t=[round(s.at, 3) for s in samples], publish=[s.publish_buckets for s in samples]
    )
    for name, subject, *_ in consumers:
        history.handled[name] = [s.handled(subject, "ack") for s in samples]
        history.pending[name] = [_float(s.pending.get(name)) for s in samples]
        history.oldest_unacked[name] = [round(s.oldest_unacked.get(name, 0.0), 3) for s in samples]
        history.dead_letters[name] = [s.dead_letters.get(subject, 0) for s in samples]
    return Numbers(
        node_id=node_id,
        consumers=rows,
        qos=QosCounters(
            qos0_lost=now.qos0_lost,
            publish_retries=now.publish_retries,
            redeliveries=sum(now.redeliveries.values()),
            dedupe_hits={side: float(hits) for side, hits in now.dedupe_hits.items()},
        ),
        publish=now.publish_buckets,
        process=now.process_buckets,
        history=history,
    )


def view(scope: Scope, reports: Sequence[Numbers], missing: Iterable[str] = ()) -> Messaging:
    """The view of `reports` (one for the instance scope, every instance's for the service)."""
    consumers: dict[str, ConsumerStats] = {}
    for report in reports:
        for row in report.consumers:
            seen = consumers.get(row.consumer)
            consumers[row.consumer] = row.model_copy() if seen is None else _merged(seen, row)
    hits: defaultdict[str, float] = defaultdict(float)
    for report in reports:
        for side, n in report.qos.dedupe_hits.items():
            hits[side] += n
    publish = _added(report.publish for report in reports)
    process = _added(report.process for report in reports)
    return Messaging(
        scope=scope,
        instances=[report.node_id for report in reports],
        missing=sorted(missing),
        consumers=sorted(consumers.values(), key=lambda c: c.consumer),
        qos=QosCounters(
            qos0_lost=sum(r.qos.qos0_lost for r in reports),
            publish_retries=sum(r.qos.publish_retries for r in reports),
            redeliveries=sum(r.qos.redeliveries for r in reports),
            dedupe_hits=dict(hits),
        ),
        latency=Latency(
            publish_p50=quantile(0.5, publish),
            publish_p99=quantile(0.99, publish),
            handler_p50=quantile(0.5, process),
            handler_p99=quantile(0.99, process),
        ),
        charts=charts(reports),
    )


def _merged(seen: ConsumerStats, row: ConsumerStats) -> ConsumerStats:
    """Two instances' rows of one consumer: counts added, a shared backlog taken once."""
    if seen.pending is None or row.pending is None:
        pending = seen.pending if row.pending is None else row.pending
    elif seen.shared:
        pending = max(seen.pending, row.pending)
    else:
        pending = seen.pending + row.pending
    return seen.model_copy(
        update={
            "pending": pending,
            "oldest_unacked": max(seen.oldest_unacked, row.oldest_unacked),
            "handled": seen.handled + row.handled,
            "duplicates": seen.duplicates + row.duplicates,
            "redeliveries": seen.redeliveries + row.redeliveries,
            "dead_letters": seen.dead_letters + row.dead_letters,
        }
    )


def _added(counts: Iterable[Sequence[int]]) -> list[int]:
    total: list[int] = []
    for one in counts:
        if len(total) < len(one):
            total.extend([0] * (len(one) - len(total)))
        for i, n in enumerate(one):
            total[i] += n
    return total


def quantile(
    q: float, buckets: Sequence[int], bounds: Sequence[float] = SECONDS_BUCKETS
) -> float | None:
    """The q-quantile of bucket counts (bucket i holds values up to bounds[i]; the last, the
    values above them all), interpolated inside its bucket as Prometheus does; None when
    empty. Values above the highest bound read as that bound."""
    total = sum(buckets)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(buckets):
        if n and seen + n >= rank:
            if i >= len(bounds):
                return bounds[-1]
            low = bounds[i - 1] if i else 0.0
            return round(low + (bounds[i] - low) * (rank - seen) / n, 6)
        seen += n
    return bounds[-1]


def slot_of(t: float) -> float:
    return round(math.floor(t / EVERY) * EVERY, 3)


def charts(reports: Sequence[Numbers]) -> Charts:
    """The reports' histories on shared slots: rates and publish p99 from the differences
    between an instance's successive samples, then added up (rates, new publishes) or taken
    at their largest (a backlog, the oldest unacked age); dead letters as a running total,
    each instance's carried forward over the slots where it has no sample."""
    slots: set[float] = set()
    rate: defaultdict[str, dict[float, float]] = defaultdict(dict)
    pending: defaultdict[str, dict[float, float]] = defaultdict(dict)
    oldest: defaultdict[str, dict[float, float]] = defaultdict(dict)
    dead: list[tuple[str, dict[float, float]]] = []
    new_publishes: dict[float, list[int]] = {}
    for report in reports:
        h = report.history
        at = [slot_of(t) for t in h.t]
        slots.update(at)
        for name, counts in h.handled.items():
            for i in range(1, len(counts)):
                elapsed = h.t[i] - h.t[i - 1]
                if elapsed > 0:
                    per_second = max(0.0, counts[i] - counts[i - 1]) / elapsed
                    rate[name][at[i]] = rate[name].get(at[i], 0.0) + per_second
        for name, values in h.pending.items():
            for slot, value in zip(at, values, strict=False):
                if value is not None:
                    pending[name][slot] = max(pending[name].get(slot, 0.0), value)
        for name, ages in h.oldest_unacked.items():
            for slot, age in zip(at, ages, strict=False):
                oldest[name][slot] = max(oldest[name].get(slot, 0.0), age)
        for name, totals in h.dead_letters.items():
            dead.append((name, dict(zip(at, totals, strict=False))))
        for i in range(1, len(h.publish)):
            before, after = h.publish[i - 1], h.publish[i]
            if len(before) == len(after):
                delta = [max(0, a - b) for a, b in zip(after, before, strict=True)]
                new_publishes[at[i]] = _added([new_publishes.get(at[i], []), delta])
    t = sorted(slots)
    result = Charts(t=t)
    for name, by_slot in sorted(rate.items()):
        result.handled_per_second[name] = [_round(by_slot.get(s)) for s in t]
    for name, by_slot in sorted(pending.items()):
        result.pending[name] = [by_slot.get(s) for s in t]
    for name, by_slot in sorted(oldest.items()):
        result.oldest_unacked[name] = [by_slot.get(s) for s in t]
    for name in sorted({name for name, _ in dead}):
        result.dead_letters[name] = _running_total([d for n, d in dead if n == name], t)
    result.publish_p99 = [quantile(0.99, new_publishes.get(s, [])) for s in t]
    return result


def _running_total(histories: list[dict[float, float]], t: list[float]) -> list[float | None]:
    """Each instance's running total carried forward, added up per slot."""
    last = [0.0] * len(histories)
    known = [False] * len(histories)
    out: list[float | None] = []
    for slot in t:
        for i, history in enumerate(histories):
            if slot in history:
                last[i], known[i] = history[slot], True
        out.append(sum(last) if any(known) else None)
    return out


def _float(value: int | None) -> float | None:
    return None if value is None else float(value)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
