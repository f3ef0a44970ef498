"""The metric instruments qosmesh records, by their contract names (docs/observability.md).

Instruments come from the OpenTelemetry API's global meter provider, so every component records
to the same names. Counters are plain sums in this process, reported through observable
counters: an SDK counter add costs about 10 µs, far more than the work it counts on the hot
paths.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

meter = metrics.get_meter("qosmesh")

Attributes = Mapping[str, str | int]


class Series:
    """One attribute set of a Counter: what the hot paths hold on to, so that counting a message
    is an addition, not a dictionary built and hashed."""

    __slots__ = ("_lock", "value")

    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock
        self.value = 0

    def add(self, amount: int = 1) -> None:
        with self._lock:
            self.value += amount


class Counter:
    """A monotonic counter kept as cumulative sums per attribute set, read by the SDK at
    collection time. Same names, units and attributes as a synchronous counter; no exemplars."""

    def __init__(self, name: str, unit: str, description: str) -> None:
        self._series: dict[frozenset[tuple[str, str | int]], Series] = {}
        self._lock = threading.Lock()
        meter.create_observable_counter(
            name, callbacks=[self._observe], unit=unit, description=description
        )

    def series(self, attributes: Attributes | None = None) -> Series:
        key = frozenset(attributes.items()) if attributes else frozenset()
        found = self._series.get(key)
        if found is None:
            with self._lock:
                found = self._series.setdefault(key, Series(self._lock))
        return found

    def add(self, amount: int, attributes: Attributes | None = None) -> None:
        self.series(attributes).add(amount)

    def _observe(self, options: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            sums = [(key, series.value) for key, series in self._series.items()]
        return [Observation(value, dict(key)) for key, value in sums]


sent_messages = Counter(
    "messaging.client.sent.messages",
    unit="{message}",
    description="Messages published, by outcome (ok, error, lost)",
)
consumed_messages = Counter(
    "messaging.client.consumed.messages",
    unit="{message}",
    description="Deliveries handled, by outcome (ack, nak, term, duplicate)",
)
process_duration = meter.create_histogram(
    "messaging.process.duration",
    unit="s",
    description="Handler time per delivery",
    explicit_bucket_boundaries_advisory=[
        0.001,
        0.0025,
        0.005,
        0.01,
        0.025,
        0.05,
        0.1,
        0.25,
        0.5,
        1.0,
        2.5,
        5.0,
        10.0,
        30.0,
    ],
)
qos0_lost = Counter("qosmesh.qos0.lost", unit="{message}", description="QoS 0 publishes dropped")
publish_retries = Counter(
    "qosmesh.publish.retries", unit="{attempt}", description="Extra QoS 1+ publish attempts"
)
redeliveries = Counter(
    "qosmesh.redeliveries", unit="{message}", description="Deliveries with a count above 1"
)
dedupe_hits = Counter(
    "qosmesh.dedupe.hits", unit="{message}", description="QoS 2 duplicates stopped, by side"
)
dead_letters = Counter(
    "qosmesh.dead_letters", unit="{message}", description="Messages dead-lettered, by reason"
)
discovery_events = Counter(
    "qosmesh.discovery.events",
    unit="{event}",
    description="Membership changes seen, by type (joined, updated, left) and reason",
)


_sent: dict[tuple[str, str, int, str], Series] = {}


def sent_series(system: str, subject: str, qos: int, outcome: str) -> Series:
    """The `messaging.client.sent.messages` series of one destination and outcome."""
    key = (system, subject, qos, outcome)
    found = _sent.get(key)
    if found is None:
        attributes: dict[str, str | int] = {
            "messaging.system": system,
            "messaging.destination.name": subject,
            "qos": int(qos),
            "outcome": outcome,
        }
        found = _sent[key] = sent_messages.series(attributes)
    return found


CONSUMED_OUTCOMES = ("ack", "nak", "term", "duplicate", "trimmed")


def consumed_series(attributes: Attributes) -> dict[str, Series]:
    """The `messaging.client.consumed.messages` series of one consumer, by outcome."""
    return {
        outcome: consumed_messages.series({**attributes, "outcome": outcome})
        for outcome in CONSUMED_OUTCOMES
    }


PendingSource = Callable[[], Iterable[Observation]]
_pending_sources: list[PendingSource] = []


def watch_pending(source: PendingSource) -> Callable[[], None]:
    """Report `source`'s observations as `qosmesh.consumer.pending`; returns the undo."""
    _pending_sources.append(source)
    return lambda: _pending_sources.remove(source)


def _observe_pending(options: CallbackOptions) -> Iterable[Observation]:
    for source in list(_pending_sources):
        yield from source()


consumer_pending = meter.create_observable_gauge(
    "qosmesh.consumer.pending",
    callbacks=[_observe_pending],
    unit="{message}",
    description="Messages waiting for a consumer or delivered and not yet acked",
)


def record_zeros(destinations: Iterable[tuple[str, str, int]]) -> None:
    """Put every counter on /metrics at zero from the start (an absent series breaks rates and
    alerts). `destinations` are (messaging system, subject, qos) of this instance's traffic."""
    for system, subject, qos in destinations:
        base: dict[str, str | int] = {
            "messaging.system": system,
            "messaging.destination.name": subject,
            "qos": qos,
        }
        for outcome in ("ok", "error", "lost"):
            sent_series(system, subject, qos, outcome)
        consumed_series(base)
        if qos == 0:
            qos0_lost.add(0, {"messaging.destination.name": subject})
        redeliveries.add(0, {"messaging.system": system, "destination": subject})
        for reason in ("max_deliveries", "undecodable", "unknown_version", "unknown_type"):
            dead_letters.add(
                0, {"messaging.system": system, "destination": subject, "reason": reason}
            )
        publish_retries.add(0, {"messaging.system": system})
    qos0_lost.add(0)
    for side in ("publisher", "receiver"):
        dedupe_hits.add(0, {"side": side})
    for kind in ("joined", "updated", "left"):
        discovery_events.add(0, {"type": kind})
