"""The CI set of fault schedules: every promise of QoS 1 and QoS 2 holds under random,
overlapping faults, on JetStream, on Redis Streams and on a 3-node JetStream cluster."""

import pytest

from app.chaos import plan, run
from app.chaos.schedule import Variant

CI_WINDOW = 20.0
CI_SEEDS: list[tuple[int, Variant]] = [(101, "jetstream"), (202, "redis"), (303, "cluster")]


@pytest.mark.slow
@pytest.mark.xdist_group("chaos")
@pytest.mark.timeout(180)
@pytest.mark.parametrize(("seed", "variant"), CI_SEEDS, ids=[v for _, v in CI_SEEDS])
async def test_a_fault_schedule_breaks_no_promise(seed, variant, tmp_path):
    report = await run(plan(seed, variant, CI_WINDOW), tmp_path)
    print(report.describe())
    assert report.ok, report.describe()
    assert report.counts["operations"] > 50
