"""The metric instruments qosmesh records, by their contract names (docs/observability.md).

Instruments come from the OpenTelemetry API's global meter provider, so every component records
to the same names. Counters are plain sums in this process, reported through observable
counters: an SDK counter add costs about 10 µs, far more than the work it counts on the hot
paths.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    HistogramDataPoint,
    Metric,
    MetricReader,
    MetricsData,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.metrics.export import Histogram as SdkHistogram
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from app.messages import DeadLetterReason

SCOPE = "qosmesh"
meter = metrics.get_meter(SCOPE)

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

    def values(self) -> list[tuple[dict[str, str | int], int]]:
        """Every series now, as (attributes, sum): what code reads without a scrape."""
        with self._lock:
            sums = [(key, series.value) for key, series in self._series.items()]
        return [(dict(key), value) for key, value in sums]

    def _observe(self, options: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            sums = [(key, series.value) for key, series in self._series.items()]
        return [Observation(value, dict(key)) for key, value in sums]


class HistogramSeries:
    """One attribute set of a Histogram: cumulative bucket counts, sum, count, min and max."""

    __slots__ = ("_counts", "_owner", "attributes", "count", "max", "min", "sum")

    def __init__(self, owner: Histogram, attributes: Attributes) -> None:
        self._owner = owner
        self.attributes = attributes
        self._counts = [0] * (len(owner.boundaries) + 1)
        self.count = 0
        self.sum = 0.0
        self.min = math.inf
        self.max = -math.inf

    def record(self, value: float) -> None:
        owner = self._owner
        if not owner.local:
            owner.sdk_instrument.record(value, self.attributes)
            return
        bucket = bisect.bisect_left(owner.boundaries, value)  # buckets are (low, high]
        with owner.lock:
            self._counts[bucket] += 1
            self.count += 1
            self.sum += value
            self.min = min(self.min, value)
            self.max = max(self.max, value)

    def point(self, start: int, now: int) -> HistogramDataPoint:
        return HistogramDataPoint(
            attributes=dict(self.attributes),
            start_time_unix_nano=start,
            time_unix_nano=now,
            count=self.count,
            sum=self.sum,
            bucket_counts=list(self._counts),
            explicit_bounds=list(self._owner.boundaries),
            min=self.min,
            max=self.max,
        )


class Histogram:
    """An explicit-bucket histogram aggregated in this process (cumulative), for the per-delivery
    measurements: the SDK's synchronous histogram spends about 10 µs per record, cleaning and
    hashing the attribute set every time, the largest single cost of a delivery.

    qosmesh's metric readers (`LocalHistogramsReader`) add these histograms to what they collect,
    under the same name, unit and buckets the SDK would report. Until `keep_locally()` is called
    (by whoever installs such readers), records go to the SDK instrument instead: an application
    that brings its own MeterProvider still gets every measurement."""

    def __init__(
        self, name: str, unit: str, description: str, boundaries: tuple[float, ...]
    ) -> None:
        self.name = name
        self.unit = unit
        self.description = description
        self.boundaries = boundaries
        self.sdk_instrument = meter.create_histogram(
            name,
            unit=unit,
            description=description,
            explicit_bucket_boundaries_advisory=list(boundaries),
        )
        self.lock = threading.Lock()
        self.local = _keeping_locally
        self._series: dict[frozenset[tuple[str, str | int]], HistogramSeries] = {}
        self._start = time.time_ns()
        _histograms.append(self)

    def keep_locally(self) -> None:
        self.local = True

    def series(self, attributes: Attributes) -> HistogramSeries:
        key = frozenset(attributes.items())
        found = self._series.get(key)
        if found is None:
            with self.lock:
                found = self._series.setdefault(key, HistogramSeries(self, dict(attributes)))
        return found

    def record(self, value: float, attributes: Attributes) -> None:
        self.series(attributes).record(value)

    def buckets(self) -> list[int]:
        """The bucket counts of every series kept locally, added up (cumulative since the
        start, one more than `boundaries`: the last is above the highest bound)."""
        total = [0] * (len(self.boundaries) + 1)
        with self.lock:
            for series in self._series.values():
                for i, count in enumerate(series._counts):
                    total[i] += count
        return total

    def values(self) -> list[tuple[Attributes, int, float]]:
        """Every series kept locally, as (attributes, count, sum); none while records go to
        the SDK instrument (see `keep_locally`)."""
        with self.lock:
            return [(s.attributes, s.count, s.sum) for s in self._series.values() if s.count]

    def metric(self) -> Metric | None:
        """What was recorded locally, as the SDK would export it; None when nothing was."""
        now = time.time_ns()
        with self.lock:
            points = [s.point(self._start, now) for s in self._series.values() if s.count]
        if not points:
            return None
        data = SdkHistogram(points, AggregationTemporality.CUMULATIVE)
        return Metric(self.name, self.description, self.unit, data)


_histograms: list[Histogram] = []
_keeping_locally = False


def keep_histograms_locally() -> None:
    """Aggregate every Histogram in this process, made or to be made; call it where
    `LocalHistogramsReader`s are installed, before anything is recorded."""
    global _keeping_locally
    _keeping_locally = True
    for histogram in _histograms:
        histogram.keep_locally()


def with_local_histograms(data: MetricsData | None) -> MetricsData | None:
    """`data` with the locally aggregated histograms added to the `qosmesh` scope. An empty
    collection stays empty (it names no resource to report them under); a started service
    never has one, its counters are on record from the start."""
    metrics = [m for h in _histograms if h.local and (m := h.metric()) is not None]
    if data is None or not metrics or not data.resource_metrics:
        return data
    first, *others = data.resource_metrics
    scopes = list(first.scope_metrics)
    for i, scope in enumerate(scopes):
        if scope.scope.name == SCOPE:
            scopes[i] = ScopeMetrics(scope.scope, [*scope.metrics, *metrics], scope.schema_url)
            break
    else:
        scopes.append(ScopeMetrics(InstrumentationScope(SCOPE), metrics, ""))
    return MetricsData([ResourceMetrics(first.resource, scopes, first.schema_url), *others])


class LocalHistogramsReader(MetricReader):
    """Mix in before a MetricReader class: what it collects includes the local histograms."""

    def _receive_metrics(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> None:
        merged = with_local_histograms(metrics_data)
        super()._receive_metrics(merged, timeout_millis, **kwargs)  # type: ignore[arg-type, safe-super]


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
SECONDS_BUCKETS = (
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
)
"""Bucket bounds of the latency histograms, from 1 ms to 30 s."""

process_duration = Histogram(
    "messaging.process.duration",
    unit="s",
    description="Handler time per delivery",
    boundaries=SECONDS_BUCKETS,
)
publish_duration = Histogram(
    "qosmesh.publish.duration",
    unit="s",
    description="Publish time until the broker confirmed it (QoS 1 and 2) or took it (QoS 0)",
    boundaries=SECONDS_BUCKETS,
)
qos0_lost = Counter("qosmesh.qos0.lost", unit="{message}", description="QoS 0 publishes dropped")
publish_retries = Counter(
    "qosmesh.publish.retries", unit="{attempt}", description="Extra QoS 1+ publish attempts"
)
store_retries = Counter(
    "qosmesh.store.retries",
    unit="{attempt}",
    description="Extra attempts of a store operation (KV bucket, Redis key), by operation",
)
redeliveries = Counter(
    "qosmesh.redeliveries", unit="{message}", description="Deliveries with a count above 1"
)
handler_timeouts = Counter(
    "qosmesh.handler.timeouts",
    unit="{delivery}",
    description="Handlers cancelled at their deadline (their delivery failed)",
)
dedupe_hits = Counter(
    "qosmesh.dedupe.hits", unit="{message}", description="QoS 2 duplicates stopped, by side"
)
dead_letters = Counter(
    "qosmesh.dead_letters", unit="{message}", description="Messages dead-lettered, by reason"
)
dead_letters_dropped = Counter(
    "qosmesh.dead_letters.dropped",
    unit="{message}",
    description="Dead letters lost to the store's bounds: the oldest dropped to make room "
    "(policy old) or the newest refused (policy new)",
)

DeadLetterLoad = Callable[[], tuple[Attributes, int, int, float] | None]
"""A dead-letter store's size as last read: its attributes, the records and bytes it holds,
and how full it is (0 to 1, the nearer of its count and size bounds); None until read."""
_dead_letter_loads: list[DeadLetterLoad] = []


def watch_dead_letters(source: DeadLetterLoad) -> Callable[[], None]:
    """Report `source` as `qosmesh.dead_letters.stored`, `.stored_bytes` and `.fill`; returns
    the undo."""
    _dead_letter_loads.append(source)
    return lambda: _dead_letter_loads.remove(source)


def _observe_dead_letters(index: int) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def observe(options: CallbackOptions) -> Iterable[Observation]:
        for source in list(_dead_letter_loads):
            load = source()
            if load is not None:
                attributes, stored, stored_bytes, fill = load
                yield Observation((stored, stored_bytes, fill)[index], attributes)

    return observe


meter.create_observable_gauge(
    "qosmesh.dead_letters.stored",
    callbacks=[_observe_dead_letters(0)],
    unit="{message}",
    description="Dead letters the store holds",
)
meter.create_observable_gauge(
    "qosmesh.dead_letters.stored_bytes",
    callbacks=[_observe_dead_letters(1)],
    unit="By",
    description="Bytes of dead letters the store holds",
)
meter.create_observable_gauge(
    "qosmesh.dead_letters.fill",
    callbacks=[_observe_dead_letters(2)],
    unit="1",
    description="How full the dead-letter store is, 0 to 1, by the nearer of its bounds",
)
consumer_gaps = Counter(
    "qosmesh.consumer.gap",
    unit="{message}",
    description="Messages a re-created consumer could not resume from: gone from the stream",
)
discovery_events = Counter(
    "qosmesh.discovery.events",
    unit="{event}",
    description="Membership changes seen, by type (joined, updated, left) and reason",
)
micro_refused = Counter(
    "qosmesh.micro.refused",
    unit="{request}",
    description="NATS micro ($SRV) requests left unanswered over the reply rate limit, by verb",
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


LagSource = Callable[[], tuple[Attributes, int | None, float]]
"""A consumer's lag as its transport last read it: its attributes, the messages waiting for it
or delivered and not acked (None until read), and the age in seconds of the oldest delivery it
holds unacked."""
_lag_sources: list[LagSource] = []


def watch_lag(source: LagSource) -> Callable[[], None]:
    """Report `source` as `qosmesh.consumer.pending` and `.oldest_unacked`; returns the undo."""
    _lag_sources.append(source)
    return lambda: _lag_sources.remove(source)


def lags() -> list[tuple[Attributes, int | None, float]]:
    """Every consumer's lag as its transport last read it (see LagSource)."""
    return [source() for source in list(_lag_sources)]


def _observe_pending(options: CallbackOptions) -> Iterable[Observation]:
    for source in list(_lag_sources):
        attributes, pending, _age = source()
        if pending is not None:
            yield Observation(pending, attributes)


def _observe_oldest(options: CallbackOptions) -> Iterable[Observation]:
    for source in list(_lag_sources):
        attributes, _pending, age = source()
        yield Observation(round(age, 3), attributes)


consumer_pending = meter.create_observable_gauge(
    "qosmesh.consumer.pending",
    callbacks=[_observe_pending],
    unit="{message}",
    description="Messages waiting for a consumer or delivered and not yet acked",
)
consumer_oldest_unacked = meter.create_observable_gauge(
    "qosmesh.consumer.oldest_unacked",
    callbacks=[_observe_oldest],
    unit="s",
    description="Age of the oldest delivery this instance holds and has not acked yet",
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
        handler_timeouts.add(0, {"messaging.system": system, "destination": subject})
        for reason in DeadLetterReason:
            dead_letters.add(
                0, {"messaging.system": system, "destination": subject, "reason": reason}
            )
        publish_retries.add(0, {"messaging.system": system})
    qos0_lost.add(0)
    for side in ("publisher", "receiver"):
        dedupe_hits.add(0, {"side": side})
    for kind in ("joined", "updated", "left"):
        discovery_events.add(0, {"type": kind})
