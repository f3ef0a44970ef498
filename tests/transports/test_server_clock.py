"""The broker's clock as an instance reads it: an offset from a probe's round trip, kept when
the broker does not answer, and not taken from a probe too slow to trust."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from app.brokers import clock
from app.brokers.clock import ServerClock


async def test_a_slow_probe_keeps_the_last_offset(monkeypatch):
    """A broker frozen after stamping its answer: its time arrives late, and taken at the
    round trip's midpoint it would put the broker behind by half the freeze, so delays counted
    from it would fire early. The slow probe is dropped and the last offset stays."""

    def ahead_30() -> float:
        return time.time() + 30.0

    answers: list[Callable[[], float]] = [ahead_30]  # the broker 30 s ahead, at once

    async def probe() -> float:
        answer = answers[-1]
        stamped = answer()
        if len(answers) > 1:
            await asyncio.sleep(0.8)  # frozen after stamping
        return stamped

    server = ServerClock(probe)
    ahead = (await server.now()).timestamp() - time.time()
    assert ahead == pytest.approx(30.0, abs=0.05)

    answers.append(ahead_30)
    monkeypatch.setattr(clock, "MAX_AGE", 0.0)  # every call probes again
    again = (await server.now()).timestamp() - time.time()
    assert again == pytest.approx(30.0, abs=0.05)  # not 29.6


async def test_a_broker_that_does_not_answer_keeps_the_last_offset_and_is_not_asked_each_call():
    calls = 0

    async def probe() -> float:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise TimeoutError
        return time.time() - 5.0

    server = ServerClock(probe)
    await server.now()
    server._measured -= clock.MAX_AGE + 1  # the offset is old: the next call probes
    for _ in range(10):
        behind = (await server.now()).timestamp() - time.time()
        assert behind == pytest.approx(-5.0, abs=0.05)
    assert calls == 2  # one failed try, then none until RETRY_AFTER has passed


@pytest.mark.parametrize("jump", [-30.0, 45.0])
async def test_a_host_clock_that_jumps_after_a_measure_moves_no_broker_time(monkeypatch, jump):
    """An NTP step or a resumed VM moves this host's wall clock between two measures: the
    broker's time read meanwhile must not move with it (a jump back made delayed messages fire
    that much early, found by the fault schedules' clock-jump)."""
    true_time = time.time

    async def probe() -> float:
        return true_time()

    server = ServerClock(probe)
    await server.now()  # measured: the offset is fresh for MAX_AGE
    monkeypatch.setattr(time, "time", lambda: true_time() + jump)
    read = (await server.now()).timestamp()
    assert read == pytest.approx(true_time(), abs=0.05)


async def test_due_times_are_stamped_from_the_latest_the_broker_time_can_be():
    """The broker stamps its answer somewhere within the round trip, so its time now is known
    only within the round trip: a due time counted from the midpoint can be up to half of it
    early (the fault schedules saw a reminder fire 10 ms early under load). `now` is the
    latest the broker's time can be (a due time counted from it never comes early), and
    `earliest` the earliest (a scheduler that moves what is due by it never moves early)."""

    async def probe() -> float:
        stamped = time.time()  # the broker stamps at once, then its answer takes 0.3 s
        await asyncio.sleep(0.3)
        return stamped

    server = ServerClock(probe)
    await server.now()  # measured
    latest, true = (await server.now()).timestamp(), time.time()
    earliest = (await server.earliest()).timestamp()
    assert latest >= true - 0.005
    assert earliest <= true + 0.005
    assert latest - earliest == pytest.approx(0.3, abs=0.05)
