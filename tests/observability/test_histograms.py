"""Histograms aggregated in the process report what the SDK's would; without qosmesh's readers
the measurements go to the SDK instrument."""

from opentelemetry.sdk.metrics.export import HistogramDataPoint

from app.messages import DeadLetterReason
from app.observability import instruments
from app.observability.instruments import Histogram, record_zeros
from app.transports.consuming import Verdict

BOUNDS = (0.01, 0.1, 1.0)


def points(metrics, name: str) -> list[HistogramDataPoint]:
    data = metrics._reader.get_metrics_data()
    return [
        point
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == name
        for point in metric.data.data_points
    ]


def test_a_local_histogram_reports_buckets_sum_count_min_and_max(metrics):
    record_zeros([])  # as a started service does: the collection is never empty
    histogram = Histogram("qosmesh.test.local", "s", "test", BOUNDS)
    histogram.keep_locally()
    series = histogram.series({"destination": "a"})
    for value in (0.005, 0.01, 0.05, 0.5, 2.0, 2.0):  # 0.01 falls in (0, 0.01]
        series.record(value)
    histogram.record(0.2, {"destination": "b"})

    by_destination = {
        (p.attributes or {})["destination"]: p for p in points(metrics, "qosmesh.test.local")
    }
    a = by_destination["a"]
    assert list(a.bucket_counts) == [2, 1, 1, 2]
    assert list(a.explicit_bounds) == list(BOUNDS)
    assert (a.count, round(a.sum, 6), a.min, a.max) == (6, 4.565, 0.005, 2.0)
    assert list(by_destination["b"].bucket_counts) == [0, 0, 1, 0]
    assert metrics.value("qosmesh.test.local", destination="a") == 6


def test_without_local_readers_the_sdk_instrument_gets_every_measurement(metrics, monkeypatch):
    monkeypatch.setattr(instruments, "_keeping_locally", False)  # no local readers installed
    histogram = Histogram("qosmesh.test.sdk", "s", "test", BOUNDS)
    for value in (0.05, 0.5):
        histogram.record(value, {"destination": "a"})
    assert histogram.metric() is None  # nothing was kept locally
    (point,) = points(metrics, "qosmesh.test.sdk")
    assert (point.count, list(point.bucket_counts)) == (2, [0, 1, 1, 0])


def series_of(metrics, name: str, **attributes: object) -> list[dict[str, object]]:
    data = metrics._reader.get_metrics_data()
    return [
        dict(point.attributes or {})
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == name
        for point in metric.data.data_points
        if all((point.attributes or {}).get(k) == v for k, v in attributes.items())
    ]


def test_every_dead_letter_reason_and_settled_outcome_is_on_record_from_the_start(metrics):
    """An absent series breaks rates and alerts: each reason a message can be dead-lettered
    for, each way a delivery is settled, and the handlers cut at their deadline, are reported
    at zero before any happens."""
    record_zeros([("nats", "svc.zeros", 1)])
    reasons = {
        s["reason"] for s in series_of(metrics, "qosmesh.dead_letters", destination="svc.zeros")
    }
    assert reasons == set(DeadLetterReason)
    outcomes = {
        s["outcome"]
        for s in series_of(
            metrics,
            "messaging.client.consumed.messages",
            **{"messaging.destination.name": "svc.zeros"},
        )
    }
    assert {verdict for verdict in Verdict if verdict is not Verdict.BUSY} <= outcomes
    assert series_of(metrics, "qosmesh.handler.timeouts", destination="svc.zeros")
