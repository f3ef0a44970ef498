"""What this instance counted, read from the instruments themselves and kept for a second: the
console's messaging summary and the NATS micro STATS reply are built from one snapshot, so a
flood of requests costs a cache lookup each, never a scrape (docs/discovery.md)."""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from app.observability import instruments

MAX_AGE = 1.0
"""Seconds a snapshot answers for: at most one is taken per second, whatever the request rate."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The counters the console and STATS report, summed over their other attributes."""

    taken: float
    """When it was read (time.monotonic())."""
    consumed: dict[tuple[str, str], int] = field(default_factory=dict)
    """Deliveries handled, by (subject, outcome)."""
    process_seconds: dict[str, float] = field(default_factory=dict)
    """Handler time in seconds, by subject."""
    redeliveries: dict[str, int] = field(default_factory=dict)
    """Deliveries with a count above 1, by subject."""
    dead_letters: dict[str, int] = field(default_factory=dict)
    """Messages dead-lettered, by subject."""
    pending: dict[str, int] = field(default_factory=dict)
    """The backlog its transport last read, by consumer; absent until read."""
    oldest_unacked: dict[str, float] = field(default_factory=dict)
    """Seconds the oldest delivery this instance holds has waited, by consumer."""
    publish_buckets: list[int] = field(default_factory=list)
    """Publish times (`qosmesh.publish.duration`), bucket counts by SECONDS_BUCKETS."""
    process_buckets: list[int] = field(default_factory=list)
    """Handler times (`messaging.process.duration`), bucket counts by SECONDS_BUCKETS."""
    at: float = 0.0
    """When it was read, by the wall clock (time.time()): what instances line up by."""
    dedupe_hits: dict[str, int] = field(default_factory=dict)
    """QoS 2 duplicates stopped, by side."""
    qos0_lost: int = 0
    publish_retries: int = 0

    def handled(self, subject: str, *outcomes: str) -> int:
        """Deliveries of `subject` that ended in one of `outcomes` (any outcome when none)."""
        return sum(
            count
            for (on, outcome), count in self.consumed.items()
            if on == subject and (not outcomes or outcome in outcomes)
        )


def read() -> Snapshot:
    """The instruments now. Its cost grows with the number of series, not of messages."""
    consumed: defaultdict[tuple[str, str], int] = defaultdict(int)
    for attributes, value in instruments.consumed_messages.values():
        subject = str(attributes.get("messaging.destination.name", ""))
        consumed[subject, str(attributes.get("outcome", ""))] += value
    seconds: defaultdict[str, float] = defaultdict(float)
    for of_handler, _count, total in instruments.process_duration.values():
        seconds[str(of_handler.get("messaging.destination.name", ""))] += total
    pending: defaultdict[str, int] = defaultdict(int)
    oldest: defaultdict[str, float] = defaultdict(float)
    for of_consumer, waiting, age in instruments.lags():
        consumer = str(of_consumer.get("consumer", ""))
        oldest[consumer] = max(oldest[consumer], age)
        if waiting is not None:
            pending[consumer] += waiting
    return Snapshot(
        taken=time.monotonic(),
        at=time.time(),
        oldest_unacked=dict(oldest),
        publish_buckets=instruments.publish_duration.buckets(),
        process_buckets=instruments.process_duration.buckets(),
        consumed=dict(consumed),
        process_seconds=dict(seconds),
        redeliveries=_by(instruments.redeliveries, "destination"),
        dead_letters=_by(instruments.dead_letters, "destination"),
        pending=dict(pending),
        dedupe_hits=_by(instruments.dedupe_hits, "side"),
        qos0_lost=sum(value for _, value in instruments.qos0_lost.values()),
        publish_retries=sum(value for _, value in instruments.publish_retries.values()),
    )


def _by(counter: instruments.Counter, attribute: str) -> dict[str, int]:
    sums: defaultdict[str, int] = defaultdict(int)
    for attributes, value in counter.values():
        sums[str(attributes.get(attribute, ""))] += value
    return dict(sums)


class Snapshots:
    """The latest snapshot, read again once it is `max_age` seconds old."""

    def __init__(self, max_age: float = MAX_AGE, clock: Callable[[], float] = time.monotonic):
        self.max_age = max_age
        self._clock = clock
        self._latest: Snapshot | None = None
        self._read_at = -math.inf
        self.taken = 0
        """How many snapshots were read."""

    def latest(self) -> Snapshot:
        now = self._clock()
        if self._latest is None or now - self._read_at >= self.max_age:
            self._latest, self._read_at = read(), now
            self.taken += 1
        return self._latest


SNAPSHOTS = Snapshots()
"""The process's: the instruments are the process's too."""


def latest() -> Snapshot:
    """A snapshot at most a second old (see Snapshots)."""
    return SNAPSHOTS.latest()
