"""Schedules and client operations are drawn from the seed alone; the CI set covers every
fault kind on every variant, with overlapping faults."""

import pytest

from app.chaos import VARIANTS, Attempt, kinds_of, plan
from app.chaos.workload import Client
from tests.chaos.test_fault_schedules import CI_SEEDS, CI_WINDOW


def test_a_seed_gives_the_same_schedule_every_time():
    for variant in VARIANTS:
        assert plan(7, variant, 20) == plan(7, variant, 20)
        assert plan(7, variant, 20) != plan(8, variant, 20)


def test_a_seed_gives_the_same_client_operations():
    def operations(seed: int) -> list[object]:
        client = Client(seed, 0, ["http://a", "http://b"], 0.0)
        drawn: list[object] = []
        for number in range(50):
            op = client.next(number)
            if op is not None:
                if op.kind == "place":  # as if answered 202
                    op.attempts.append(_ok())
                    op.order_id = f"order-{number}"
                drawn.append((op.kind, op.key, op.amount, op.order_id))
        return drawn

    assert operations(3) == operations(3)
    assert operations(3) != operations(4)


def _ok() -> Attempt:
    return Attempt(0, 0.0, 0.0, 202)


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_ci_seeds_run_every_fault_kind_on_every_variant(variant):
    covered = {
        fault.kind
        for seed, seeded_variant in CI_SEEDS
        if seeded_variant == variant
        for fault in plan(seed, variant, CI_WINDOW).faults
    }
    assert covered == set(kinds_of(variant))


def test_the_ci_seeds_overlap_faults():
    assert all(plan(seed, variant, CI_WINDOW).overlaps() > 0 for seed, variant in CI_SEEDS)


def test_the_cluster_ci_seed_hits_the_stream_leader():
    targets = {
        f.target for seed, v in CI_SEEDS if v == "cluster" for f in plan(seed, v, CI_WINDOW).faults
    }
    assert "leader" in targets


def test_a_long_schedule_never_overlaps_faults_on_one_lane():
    for seed in range(30):
        for variant in VARIANTS:
            faults = plan(seed, variant, 60, cover=False).faults
            for i, a in enumerate(faults):
                for b in faults[i + 1 :]:
                    assert a.lane != b.lane or a.end <= b.at or b.end <= a.at, (a, b)
