"""The snapshot the console and the NATS micro STATS reply read: the instruments' own sums, read
at most once per `max_age` whatever the request rate, and what the Prometheus scrape shows."""

from __future__ import annotations

import time

from app.observability import instruments
from app.observability.snapshot import Snapshots, read

SUBJECT = "snapshot-test.orders"


def test_a_snapshot_reads_the_counters_and_handler_time_of_each_subject():
    attributes: dict[str, str | int] = {
        "messaging.system": "nats",
        "messaging.destination.name": SUBJECT,
        "qos": 1,
    }
    before = read()
    series = instruments.consumed_series(attributes)
    series["ack"].add(3)
    series["nak"].add(2)
    series["term"].add(1)
    series["duplicate"].add(4)
    instruments.redeliveries.add(2, {"messaging.system": "nats", "destination": SUBJECT})
    instruments.process_duration.record(0.25, attributes)
    instruments.process_duration.record(0.5, attributes)

    after = read()

    def grew(outcomes: tuple[str, ...]) -> int:
        return after.handled(SUBJECT, *outcomes) - before.handled(SUBJECT, *outcomes)

    assert grew(("ack",)) == 3
    assert grew(("nak", "term")) == 3
    assert grew(()) == 10  # every outcome
    assert after.redeliveries[SUBJECT] - before.redeliveries.get(SUBJECT, 0) == 2
    spent = after.process_seconds[SUBJECT] - before.process_seconds.get(SUBJECT, 0.0)
    assert abs(spent - 0.75) < 1e-9
    assert sum(after.redeliveries.values()) >= after.redeliveries[SUBJECT]


def test_a_snapshot_reports_the_backlog_only_of_consumers_whose_transport_read_it():
    read_it = ({"messaging.system": "nats", "consumer": "snap__read"}, 7, 0.0)
    not_yet = ({"messaging.system": "nats", "consumer": "snap__unread"}, None, 0.0)
    undo = [instruments.watch_lag(lambda: read_it), instruments.watch_lag(lambda: not_yet)]
    try:
        pending = read().pending
    finally:
        for unwatch in undo:
            unwatch()
    assert pending["snap__read"] == 7
    assert "snap__unread" not in pending  # the console shows "no backlog reported"


def test_one_snapshot_answers_for_max_age_however_often_it_is_asked():
    now = [100.0]
    snapshots = Snapshots(max_age=1.0, clock=lambda: now[0])
    first = snapshots.latest()
    for _ in range(10_000):
        assert snapshots.latest() is first
    now[0] += 0.999
    assert snapshots.latest() is first
    now[0] += 0.002
    second = snapshots.latest()
    assert second is not first
    assert snapshots.taken == 2


def test_reading_a_snapshot_costs_well_under_a_scrape():
    """A scrape with its text parse cost about 11 ms; a read is bounded by the series count."""
    instruments.record_zeros([("nats", f"snapshot-cost.s{i}", 1) for i in range(20)])
    rounds = 50
    started = time.perf_counter()
    for _ in range(rounds):
        read()
    each = (time.perf_counter() - started) / rounds
    print(f"\none snapshot read: {each * 1e6:.0f} µs")
    assert each < 0.005
