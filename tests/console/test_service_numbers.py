"""How the service's numbers are made from its instances' reports (app/api/messaging.py):
counters added, a shared backlog taken once, percentiles from merged buckets, charts lined up
on the wall clock."""

from __future__ import annotations

import pytest

from app.api.messaging import (
    ConsumerStats,
    History,
    Numbers,
    QosCounters,
    charts,
    quantile,
    slot_of,
    view,
)
from app.observability.history import EVERY
from app.observability.instruments import SECONDS_BUCKETS

SHARED = "svc__job"
OWN = "svc__cache__{}"  # a broadcast consumer: one per instance


def report(
    node: str, handled: float, pending: float, publish: list[int], history: History | None = None
) -> Numbers:
    return Numbers(
        node_id=node,
        consumers=[
            ConsumerStats(
                consumer=SHARED,
                subject="svc.job",
                transport="jetstream",
                qos=1,
                shared=True,
                pending=pending,
                oldest_unacked=pending / 10,
                handled=handled,
                duplicates=1,
                redeliveries=2,
                dead_letters=3,
            ),
            ConsumerStats(
                consumer=OWN.format(node),
                subject="svc.cache",
                transport="jetstream",
                qos=1,
                shared=False,
                pending=1,
                handled=handled,
                duplicates=0,
                redeliveries=0,
                dead_letters=0,
            ),
        ],
        qos=QosCounters(
            qos0_lost=1, publish_retries=2, redeliveries=2, dedupe_hits={"receiver": 1}
        ),
        publish=publish,
        process=publish,
        history=history or History(),
    )


def buckets(**at_bound: int) -> list[int]:
    """Bucket counts with `n` values in the bucket ending at bound `b{index}`."""
    counts = [0] * (len(SECONDS_BUCKETS) + 1)
    for name, n in at_bound.items():
        counts[int(name[1:])] = n
    return counts


def test_counters_add_up_and_a_shared_backlog_is_counted_once():
    reports = [
        report("a", 10, 40, buckets(b0=1)),
        report("b", 20, 42, buckets(b0=1)),
        report("c", 30, 41, buckets(b0=1)),
    ]
    seen = view("service", reports, missing=["d"])
    rows = {row.consumer: row for row in seen.consumers}
    shared = rows[SHARED]
    assert (shared.handled, shared.duplicates, shared.redeliveries, shared.dead_letters) == (
        60,
        3,
        6,
        9,
    )
    assert shared.pending == 42  # one backlog, read three times: never 123
    assert shared.oldest_unacked == pytest.approx(4.2)
    assert [rows[OWN.format(n)].handled for n in "abc"] == [10, 20, 30]  # a row each
    assert seen.qos.qos0_lost == 3
    assert seen.qos.publish_retries == 6
    assert seen.qos.dedupe_hits == {"receiver": 3}
    assert seen.instances == ["a", "b", "c"]
    assert seen.missing == ["d"]


def test_percentiles_come_from_the_merged_buckets_not_from_averaged_percentiles():
    fast = buckets(b0=99)  # 99 publishes of at most 1 ms
    slow = buckets(b9=1)  # one of 0.5 to 1 s
    merged = view("service", [report("a", 0, 0, fast), report("b", 0, 0, slow)]).latency
    assert merged.publish_p50 is not None
    assert merged.publish_p50 <= SECONDS_BUCKETS[0]
    # 99 of 100 at most 1 ms: the 99th percentile is still in the first bucket; the average
    # of the two instances' p99s would have said about half a second.
    assert merged.publish_p99 is not None
    assert merged.publish_p99 <= SECONDS_BUCKETS[0]
    tail = quantile(0.995, _merged(fast, slow))
    assert tail is not None
    assert tail > SECONDS_BUCKETS[8]


def _merged(*counts: list[int]) -> list[int]:
    return [sum(column) for column in zip(*counts, strict=True)]


def test_quantiles_of_nothing_and_of_values_past_the_last_bound():
    assert quantile(0.99, []) is None
    assert quantile(0.99, buckets()) is None
    assert quantile(0.5, buckets(**{f"b{len(SECONDS_BUCKETS)}": 5})) == SECONDS_BUCKETS[-1]
    assert quantile(0.5, buckets(b2=2)) == pytest.approx(
        (SECONDS_BUCKETS[1] + SECONDS_BUCKETS[2]) / 2
    )


def test_charts_line_instances_up_on_the_wall_clock():
    start = 1_000_000.0
    t = [start + i * EVERY for i in range(4)]
    a = report(
        "a",
        0,
        0,
        [],
        History(
            t=t,
            handled={SHARED: [0, 10, 30, 30]},
            pending={SHARED: [5, 4, None, 2]},
            oldest_unacked={SHARED: [0.0, 1.0, 2.0, 0.5]},
            dead_letters={SHARED: [0, 1, 1, 2]},
            publish=[buckets(b0=0), buckets(b0=10), buckets(b0=10, b9=1), buckets(b0=10, b9=1)],
        ),
    )
    b = report(
        "b",
        0,
        0,
        [],
        History(
            t=[x + 0.5 for x in t[1:]],  # sampled half a second later, and joined later
            handled={SHARED: [0, 4, 8]},
            pending={SHARED: [6, 3, 3]},
            oldest_unacked={SHARED: [0.0, 3.0, 0.0]},
            dead_letters={SHARED: [1, 1, 1]},
            publish=[buckets(), buckets(b0=4), buckets(b0=4)],
        ),
    )
    drawn = charts([a, b])
    assert drawn.t == [slot_of(x) for x in t]
    assert drawn.handled_per_second[SHARED] == [None, 5.0, 12.0, 2.0]
    assert drawn.pending[SHARED] == [5, 6, 3, 3]  # the larger reading of the one backlog
    assert drawn.oldest_unacked[SHARED] == [0.0, 1.0, 3.0, 0.5]
    assert drawn.dead_letters[SHARED] == [0, 2, 2, 3]  # running totals, b's carried forward
    assert drawn.publish_p99[0] is None
    assert drawn.publish_p99[1] is not None
    assert drawn.publish_p99[1] <= SECONDS_BUCKETS[0]
    assert drawn.publish_p99[2] is not None
    assert drawn.publish_p99[2] > SECONDS_BUCKETS[8]
    assert drawn.publish_p99[3] is None  # nothing published in that slot


def test_the_instance_view_is_one_report_as_it_is():
    one = report("a", 7, 3, buckets(b3=4))
    seen = view("instance", [one])
    assert seen.scope == "instance"
    assert seen.instances == ["a"]
    assert {row.consumer: row.handled for row in seen.consumers} == {SHARED: 7, OWN.format("a"): 7}
    assert {row.consumer: row.pending for row in seen.consumers} == {SHARED: 3, OWN.format("a"): 1}
