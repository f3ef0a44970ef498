"""The checker's newer invariants, on synthetic histories: progress in the fault-free windows,
reads, the chaos domain's effects (QoS 2 once, QoS 1 at least once, delayed messages and
cancel), the lease's holders, the outbox; and a run against a system that answers only 503
fails."""

from __future__ import annotations

import time
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from app.brokers.embedded import free_port
from app.chaos import Attempt, Observed, Operation, StoredOrder, check
from app.chaos.checker import FaultSpan, duplicates
from app.chaos.run import AFTER
from app.chaos.workload import Deadline, Load, drive
from app.settings import Settings
from app.testing import running_app

ORDER = "01JCHAOS0000000000000000AA"
T0 = 1_000_000.0  # the host's monotonic clock at the clients' time 0


def op(kind: Any, key: str, status: int | None, at: float = 1.0, **fields: Any) -> Operation:
    made = Operation(0, 0, kind, key, **fields)
    made.attempts.append(Attempt(0, at, at + 0.05, status))
    return made


def effect(kind: str, id_: str, at: float, instance: int = 0, **fields: Any) -> dict[str, Any]:
    return {"k": kind, "id": id_, "i": instance, "pid": 100 + instance, "t": T0 + at, **fields}


def observed(*effects: dict[str, Any], faults: tuple[FaultSpan, ...] = (), **more: Any):
    return Observed({}, effects=list(effects), faults=list(faults), t0=T0, **more)


def invariants(ops, seen) -> list[str]:
    return [violation.invariant for violation in check(ops, seen)]


# -- progress ------------------------------------------------------------------------------


def test_a_run_whose_every_answer_is_a_503_fails_on_progress():
    ops = [op("place", f"k{n}", 503, at=n * 0.5) for n in range(20)]
    assert invariants(ops, observed(clients_until=10.0)) == ["progress"]


def test_a_window_with_too_few_determinate_operations_fails():
    ops = [op("place", "k0", 202, at=4.0, order_id=ORDER)]
    ops += [op("charge", f"c{n}", 503, at=4 + n * 0.1) for n in range(5)]
    seen = observed(effect("charge", "c0", 5.0), clients_until=9.0)
    seen.orders = {ORDER: StoredOrder(ORDER, "k0", "confirmed")}
    found = check(ops, seen)
    assert [v.invariant for v in found] == ["progress"]
    assert "1 of 6 operations determinate" in found[0].detail


def test_only_fault_free_windows_are_judged_and_a_run_without_one_fails():
    during = [op("charge", f"c{n}", 503, at=2 + n * 0.2) for n in range(10)]
    fault = FaultSpan("broker-pause", "nats", 1.0, 5.0, "broker")
    after = [op("charge", "ok", 202, at=9.0)]
    seen = observed(effect("charge", "ok", 9.1), faults=(fault,), clients_until=12.0)
    assert invariants(during + after, seen) == []
    assert [(w.start, w.end) for w in seen.judged] == [(8.0, 12.0)]
    seen = observed(faults=(FaultSpan("broker-pause", "nats", 0.0, 20.0, "broker"),))
    seen.clients_until = 21.0
    assert invariants([], seen) == ["progress"]


# -- reads --------------------------------------------------------------------------------


def test_an_order_not_found_after_its_202_is_caught():
    placed = op("place", "k0", 202, at=1.0, order_id=ORDER)
    read = op("read", "r0", 404, at=2.0, order_id=ORDER)
    seen = observed()
    seen.orders = {ORDER: StoredOrder(ORDER, "k0", "confirmed")}
    assert invariants([placed, read], seen) == ["reads"]


def test_a_status_going_back_is_caught_and_overlapping_reads_are_not():
    placed = op("place", "k0", 202, at=1.0, order_id=ORDER)
    first = op("read", "r0", 200, at=2.0, order_id=ORDER)
    first.answer = {"status": "confirmed", "paid": 5}
    later = op("read", "r1", 200, at=3.0, order_id=ORDER)
    later.answer = {"status": "pending", "paid": 5}
    seen = observed()
    seen.orders = {ORDER: StoredOrder(ORDER, "k0", "confirmed")}
    assert invariants([placed, first, later], seen) == ["reads"]
    later.attempts[0] = Attempt(0, 2.01, 2.2, 200)  # began before the first one answered
    assert invariants([placed, first, later], seen) == []


# -- QoS 2 and QoS 1 effects -----------------------------------------------------------------


def test_a_charge_run_twice_with_no_fault_is_caught():
    ops = [op("charge", "c1", 202)]
    seen = observed(effect("charge", "c1", 1.1, 0), effect("charge", "c1", 4.0, 1))
    found = check(ops, seen)
    assert [v.invariant for v in found] == ["qos2-once"]
    assert "no fault to explain it" in found[0].detail


@pytest.mark.parametrize(
    ("fault", "explained"),
    [
        (FaultSpan("instance-kill", "i0", 2.0, 4.0, "i0"), True),
        (FaultSpan("instance-pause", "i0", 2.0, 5.0, "i0"), True),  # past the stale time
        (FaultSpan("broker-pause", "nats", 2.0, 5.0, "broker"), True),
        (FaultSpan("broker-pause", "nats", 2.0, 3.0, "broker"), False),  # shorter: the old bug
        (FaultSpan("instance-kill", "i1", 2.0, 4.0, "i1"), False),  # not the one that ran it
        # The second runner, stopped past the stale time holding a claim that was then taken
        # over, ran its handler on when it resumed.
        (FaultSpan("instance-pause", "i1", 0.5, 4.0, "i1"), True),
        (FaultSpan("instance-pause", "i2", 0.5, 4.0, "i2"), False),  # ran neither
        (FaultSpan("net-db", "i0", 2.0, 6.0, "i0"), False),  # the claim store stayed reachable
        (FaultSpan("instance-drain", "i0", 2.0, 3.5, "i0"), False),
        (FaultSpan("instance-kill", "i0", 5.0, 6.0, "i0"), False),  # after the second run
        # Healed just before the first run, but its claim was taken over the slow link.
        (FaultSpan("net-latency", "i0", 0.0, 1.0, "i0", after=2.9), True),
        (FaultSpan("net-latency", "i0", 0.0, 0.5, "i0", after=0.5), False),  # long over by then
        # Healed just before the first run: the elections after it left the store leaderless.
        (
            FaultSpan(
                "broker-partition", "n2", -7.0, 0.5, "broker", after=AFTER["broker-partition"]
            ),
            True,
        ),
        (FaultSpan("broker-partition", "n2", -7.0, 0.5, "broker"), False),  # counted to the heal
    ],
)
def test_a_rerun_is_explained_only_by_the_bounds_docs_state(fault, explained):
    ops = [op("charge", "c1", 202)]
    seen = observed(effect("charge", "c1", 1.1, 0), effect("charge", "c1", 4.5, 1), faults=(fault,))
    assert invariants(ops, seen) == ([] if explained else ["qos2-once"])
    assert bool(duplicates(seen)) is explained


def test_charges_lost_refused_or_never_sent_are_caught():
    ops = [op("charge", "lost", 202), op("charge", "refused", 422), op("charge", "maybe", None)]
    seen = observed(effect("charge", "refused", 1.2), effect("charge", "stranger", 1.3))
    assert sorted(invariants(ops, seen)) == ["qos2-once"] * 3
    assert invariants(ops[2:], observed()) == []  # an indeterminate charge may never run


def test_a_step_answered_202_runs_at_least_once():
    ops = [op("step", "s1", 202, ref="s0", n=1)]
    assert invariants(ops, observed()) == ["qos1-at-least-once"]
    twice = observed(
        effect("step", "s1", 1.1, key="s0", n=1), effect("step", "s1", 1.5, key="s0", n=1)
    )
    assert invariants(ops, twice) == []  # at least once: twice is allowed


# -- delayed messages and cancel -------------------------------------------------------------


def test_a_reminder_fires_once_not_early_and_never_after_a_cancel_said_true():
    remind = op("remind", "r1", 202, delay=2.0)
    on_time = observed(effect("fire", "r1", 3.2))  # sent at 1.0 with a 2 s delay
    assert invariants([remind], on_time) == []
    early = observed(effect("fire", "r1", 2.5))
    assert invariants([remind], early) == ["delayed-early"]
    assert invariants([remind], observed()) == ["delayed-once"]
    cancel = op("cancel", "x1", 200, at=1.5, ref="r1")
    cancel.answer = {"cancelled": True}
    assert invariants([remind, cancel], observed()) == []
    assert invariants([remind, cancel], on_time) == ["cancel"]
    cancel.answer = {"cancelled": False}
    assert invariants([remind, cancel], on_time) == []


# -- publish_many, per-key order, QoS 0 --------------------------------------------------------


def test_each_charge_of_a_batch_runs_once():
    batch = op("batch", "b1", 202, n=3)
    runs = [effect("charge", f"b1-{n}", 1.5) for n in range(3)]
    assert invariants([batch], observed(*runs)) == []
    assert invariants([batch], observed(*runs[:2])) == ["qos2-once"]  # b1-2 never ran
    assert invariants([batch], observed(*runs, effect("charge", "b1-1", 1.8, 1))) == ["qos2-once"]


def test_a_key_whose_steps_the_stream_holds_out_of_order_is_caught():
    first = op("step", "s1", 202, at=1.0, ref="k0", n=1)
    second = op("step", "s2", 202, at=2.0, ref="k0", n=2)
    other = op("step", "s3", 202, at=1.5, ref="k1", n=1)
    ran = [effect("step", o.key, 3.0, key=o.ref, n=o.n) for o in (first, second, other)]
    ops = [first, second, other]
    assert invariants(ops, observed(*ran, stream_steps=["s3", "s1", "poison-1", "s2"])) == []
    assert invariants(ops, observed(*ran, stream_steps=["s1", "s2", "s1", "s3"])) == []
    assert invariants(ops, observed(*ran, stream_steps=["s2", "s1", "s3"])) == ["order"]


def test_qos0_pings_arrive_at_most_once_and_the_loss_counter_counts_what_it_says():
    calm = [op("ping", f"p{n}", 202, at=4.0 + n * 0.1) for n in range(10)]
    arrived = [effect("ping", o.key, 4.5) for o in calm]
    assert invariants(calm, observed(*arrived, clients_until=9.0, qos0_lost=0)) == []
    twice = observed(*arrived, effect("ping", "p0", 4.6, 1), clients_until=9.0)
    assert invariants(calm, twice) == ["qos0"]
    lost = observed(*arrived[:5], clients_until=9.0)
    assert invariants(calm, lost) == ["qos0"]  # half of the calm window's pings never came
    # Sent while i0 was cut from the brokers: dropped, and each must be counted.
    cut = FaultSpan("net-cut", "i0", 10.0, 14.0, "i0")
    during = [op("ping", f"q{n}", 202, at=11.0 + n * 0.2) for n in range(5)]
    counted = observed(faults=(cut,), qos0_lost=5)
    assert invariants(during, counted) == []
    assert invariants(during, observed(faults=(cut,), qos0_lost=3)) == ["qos0"]  # too few
    assert invariants(during[:2], observed(faults=(cut,), qos0_lost=5)) == ["qos0"]  # too many


# -- leases ----------------------------------------------------------------------------------


def lease(at: float, token: int, instance: int) -> dict[str, Any]:
    return effect("lease", "", at, instance, token=token)


def test_two_lease_holders_acting_at_once_are_caught():
    handover = observed(lease(1.0, 5, 0), lease(1.2, 5, 0), lease(4.0, 9, 1), lease(4.2, 9, 1))
    assert invariants([], handover) == []
    overlap = observed(lease(1.0, 5, 0), lease(4.0, 9, 1), lease(4.1, 5, 0), lease(4.2, 9, 1))
    assert invariants([], overlap) == ["lease"]
    backwards = observed(lease(1.0, 9, 0), lease(4.0, 5, 1))
    assert invariants([], backwards) == ["lease"]


# -- the outbox ------------------------------------------------------------------------------


def test_outbox_rows_dead_or_never_sent_are_caught():
    assert invariants([], observed(dead_rows=["01J"])) == ["outbox"]
    assert invariants([], observed(unsent_rows=["01J"])) == ["outbox"]


# -- a real run against a system that answers only 503 ---------------------------------------


@pytest.mark.slow  # a real server: run in CI, left out of a generated project's quick run
async def test_a_vacuous_system_fails_the_run():
    """Real clients against an HTTP server answering every request 503: every operation is
    indeterminate, which the older checker passed; the progress floor fails it."""
    unavailable = FastAPI()

    @unavailable.api_route("/{path:path}", methods=["GET", "POST", "DELETE"])
    async def refuse(path: str) -> JSONResponse:
        return JSONResponse({"title": "unavailable"}, status_code=503)

    settings = Settings(port=free_port())
    async with running_app(settings, unavailable) as (_, url):
        started = time.monotonic()
        ops = await drive(7, [url], started, Deadline(started + 2.5), Load(clients=2))
    assert len(ops) >= 2
    assert all(o.outcome == "indeterminate" for o in ops)
    seen = Observed({}, clients_until=time.monotonic() - started)
    assert "progress" in invariants(ops, seen)


# -- liveness --------------------------------------------------------------------------------


def test_an_instance_silent_with_no_fault_on_it_is_caught():
    silent = [(float(t), t < 5 or t > 10) for t in range(15)]
    assert invariants([], observed(health={"i0": silent})) == ["liveness"]
    paused = FaultSpan("instance-pause", "i0", 5.0, 8.0, "i0")  # silent until its grace ends
    assert invariants([], observed(health={"i0": silent}, faults=(paused,))) == []
    flood = FaultSpan("stats-flood", "hostile", 5.0, 8.0, "hostile")
    assert invariants([], observed(health={"i0": silent}, faults=(flood,))) == ["liveness"]
    short = [(float(t), t not in (5, 6)) for t in range(15)]
    assert invariants([], observed(health={"i0": short})) == []
