"""The CI set of fault schedules: every promise of QoS 1 and QoS 2 holds under random,
overlapping faults, on JetStream, on Redis Streams and on a 3-node JetStream cluster."""

import pytest

from app.chaos import plan, run
from app.chaos.schedule import CLOCK_KINDS, CLUSTER_KINDS, DISK_KINDS, NEW_KINDS, Variant
from app.testing.faults import FAKETIME, Disk

CI_WINDOW = 20.0
CI_SEEDS: list[tuple[int, Variant]] = [(101, "jetstream"), (202, "redis"), (303, "cluster")]


@pytest.mark.slow
@pytest.mark.xdist_group("chaos")
@pytest.mark.timeout(180)
@pytest.mark.parametrize(("seed", "variant"), CI_SEEDS, ids=[v for _, v in CI_SEEDS])
async def test_a_fault_schedule_breaks_no_promise(seed, variant, tmp_path):
    """The classic kinds; the cluster's schedule also cuts a node from its peers."""
    also = CLUSTER_KINDS if variant == "cluster" else ()
    report = await run(plan(seed, variant, CI_WINDOW, classic=True, also=also), tmp_path)
    print(report.describe())
    assert report.ok, report.describe()
    assert report.counts["operations"] > 50


@pytest.mark.slow
@pytest.mark.xdist_group("chaos")
@pytest.mark.timeout(180)
async def test_unpaid_orders_are_cancelled_under_faults_and_no_paid_order_ever_is(tmp_path):
    """APP_EXAMPLE_PAYMENT_TIMEOUT set: delayed cancellations race payments under faults."""
    report = await run(
        plan(404, "jetstream", CI_WINDOW, classic=True, payment_timeout=3.0), tmp_path
    )
    print(report.describe())
    assert report.ok, report.describe()
    assert report.counts["operations"] > 50
    assert report.counts.get("cancelled", 0) > 0, "no order was left unpaid long enough"


@pytest.mark.slow
@pytest.mark.xdist_group("chaos")
@pytest.mark.timeout(300)
async def test_every_fault_kind_in_one_schedule_breaks_no_promise(tmp_path):
    """Long faults past the publish deadline, the lease TTL and 3 x ack wait; cuts from the
    brokers or the database alone; faults aimed at the lease holder; rolling restarts with a
    longer APP_LEASE_TTL and with the fallback scheduler; a clock jumping; full disks; STATS
    floods, poison messages and unsendable outbox rows."""
    why_no_disk = Disk.available(tmp_path)
    schedule = plan(
        505, "jetstream", CI_WINDOW, faketime=FAKETIME is not None, tmpfs=why_no_disk is None
    )
    missing = set()
    if FAKETIME is None:
        missing |= set(CLOCK_KINDS)
        print("clock faults skipped: libfaketime is not installed (apt-get install faketime)")
    if why_no_disk is not None:
        missing |= set(DISK_KINDS)
        print(f"disk faults skipped: {why_no_disk}")
    assert set(NEW_KINDS) - missing <= {fault.kind for fault in schedule.faults}
    report = await run(schedule, tmp_path)
    print(report.describe())
    assert report.ok, report.describe()
    assert report.counts["charges"] > 10
    assert report.counts["effects"] > 50
    assert report.counts["windows judged"] >= 1
