"""Deadlines, queued in order or heaped out of it, fail what is still pending, late by at most a
tick."""

import asyncio
import time
from functools import partial

import pytest

from app.brokers.deadlines import Deadlines


async def test_a_pending_future_fails_at_its_deadline_and_a_settled_one_is_left_alone():
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(tick=0.02)
    waiting, answered, later = loop.create_future(), loop.create_future(), loop.create_future()
    deadlines.fail_after(later, 5.0, lambda: TimeoutError("later"))
    deadlines.fail_after(waiting, 0.1, lambda: TimeoutError("no ack"))
    deadlines.fail_after(answered, 0.1, lambda: TimeoutError("no ack"))
    answered.set_result("ack")
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="no ack"):
        await waiting
    assert 0.1 <= time.monotonic() - started < 0.1 + 0.02 + 0.05
    assert answered.result() == "ack"
    assert not later.done()
    later.cancel()


async def test_thousands_of_deadlines_cost_one_sweeper():
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(tick=0.01)
    futures = [loop.create_future() for _ in range(5000)]
    for n, future in enumerate(futures):
        deadlines.fail_after(future, 0.05 if n % 2 else 10.0, TimeoutError)
        if n % 2 == 0:
            future.set_result(n)
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert len(tasks) == 1
    await asyncio.sleep(0.1)
    assert all(isinstance(f.exception(), TimeoutError) for f in futures[1::2])
    assert [f.result() for f in futures[::2]] == list(range(0, 5000, 2))


def record(fired: list[float], timeout: float, _: asyncio.Future[None]) -> None:
    fired.append(timeout)


async def test_deadlines_out_of_order_fire_in_the_order_they_fall():
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(tick=0.01)
    fired: list[float] = []
    timeouts = (0.2, 0.05, 0.3, 0.1, 0.1, 0.25)  # queued, heaped, queued, heaped, ...
    futures = [loop.create_future() for _ in timeouts]
    for future, timeout in zip(futures, timeouts, strict=True):
        future.add_done_callback(partial(record, fired, timeout))
        deadlines.fail_after(future, timeout, TimeoutError)
    await asyncio.sleep(0.4)
    assert fired == sorted(fired) == [0.05, 0.1, 0.1, 0.2, 0.25, 0.3]
