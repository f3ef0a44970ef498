"""Handler deadlines: a hung handler is cancelled at APP_HANDLER_TIMEOUT (or its own `timeout=`),
counted, and its delivery fails as any failed one does, so hung handlers cannot stop a consumer."""

import asyncio
import time
from collections import Counter

import pytest

from app.bus import Bus
from app.bus.handler_deadlines import Bounded, Handler, HandlerDeadlines
from app.errors import ConfigurationError, HandlerTimeoutError
from app.observability.instruments import handler_timeouts
from app.settings import Settings
from app.testing import Metrics, eventually
from tests.transports.conftest import Charge, Ping, running_bus
from tests.transports.test_contract import has_dead_letters
from tests.transports.test_router import memory_bus

HUNG = 64
"""As many hung handlers as a consumer runs at once (APP_CONSUMER_CONCURRENCY's default)."""
ALWAYS = frozenset(range(4))
"""Messages whose handler hangs on every delivery: they end as dead letters."""
LATER = range(HUNG, HUNG + 16)
"""Messages published behind the hung ones; their handler never hangs."""


def timeouts(metrics: Metrics, subject: str) -> float:
    return metrics.value("qosmesh.handler.timeouts", destination=subject)


async def test_sixty_four_hung_handlers_are_cut_at_their_deadline_and_the_consumer_goes_on(
    bus_settings, metrics
):
    """Every slot of the consumer is taken by a handler that hangs on its first delivery. At
    APP_HANDLER_TIMEOUT=2 each is cancelled and counted; the messages behind them are handled,
    each hung one is handled on its next delivery, and one that hangs every time is
    dead-lettered at APP_MAX_DELIVER."""
    settings = bus_settings(handler_timeout=2, max_deliver=2, ack_wait=5)
    assert settings.consumer_concurrency == HUNG
    calls: Counter[int] = Counter()
    started: dict[int, float] = {}
    handled: dict[int, float] = {}
    never = asyncio.Event()

    async def handle(message: Ping) -> None:
        calls[message.n] += 1
        started.setdefault(message.n, time.monotonic())
        if message.n < HUNG and (calls[message.n] == 1 or message.n in ALWAYS):
            await never.wait()
        handled[message.n] = time.monotonic()

    before = timeouts(metrics, "svc.ping")
    async with running_bus(settings, lambda bus: bus.subscribe(Ping, handle)) as running:
        await running.bus.publish_many(Ping(n=n) for n in range(HUNG))
        await eventually(lambda: len(calls) == HUNG, message="every slot taken by a hung handler")
        await running.bus.publish_many(Ping(n=n) for n in LATER)
        await eventually(
            lambda: set(handled) == set(range(HUNG + len(LATER))) - ALWAYS,
            timeout=30,
            message="the later messages and the hung ones' next deliveries handled",
        )
        store = running.transports.by_name["jetstream"].dead_letters
        assert store is not None
        await eventually(lambda: has_dead_letters(store, len(ALWAYS)), timeout=15)
        page = await store.list(10, None)
        await asyncio.sleep(1)  # nothing runs a third time
    assert timeouts(metrics, "svc.ping") - before == HUNG + len(ALWAYS)
    assert all(handled[n] - started[n] >= 2.0 for n in range(len(ALWAYS), HUNG)), "cut early"
    assert {n: calls[n] for n in range(HUNG)} == dict.fromkeys(range(HUNG), 2)
    assert {n: calls[n] for n in LATER} == dict.fromkeys(LATER, 1)
    assert sorted(item.deliveries for item in page.items) == [2] * len(ALWAYS)
    for item in page.items:
        assert item.reason == "max_deliveries"
        assert item.error == "HandlerTimeoutError: handler still running after 2 s (cancelled)"


async def test_a_handlers_own_timeout_overrides_the_setting(bus_settings, metrics):
    """APP_HANDLER_TIMEOUT=1: a handler subscribed with timeout=4 runs its 2 s to the end, once;
    a QoS 2 handler on the setting is cut at 1 s, its claim released, and applied once on the
    next delivery."""
    settings = bus_settings(handler_timeout=1, ack_wait=5)
    slow: list[int] = []
    charges: list[int] = []
    never = asyncio.Event()

    def setup(bus: Bus) -> None:
        @bus.handler(Ping, timeout=4)
        async def take_your_time(message: Ping) -> None:
            await asyncio.sleep(2)
            slow.append(message.n)

        async def charge(message: Charge) -> None:
            charges.append(message.n)
            if len(charges) == 1:
                await never.wait()

        bus.subscribe(Charge, charge)

    before = {subject: timeouts(metrics, subject) for subject in ("svc.ping", "svc.charge")}
    async with running_bus(settings, setup) as running:
        await running.bus.publish(Ping(n=1))
        await running.bus.publish(Charge(n=2))
        await eventually(lambda: slow == [1] and charges == [2, 2], timeout=15)
        await asyncio.sleep(1.5)  # no second delivery of either
    assert slow == [1]
    assert charges == [2, 2]
    assert timeouts(metrics, "svc.ping") == before["svc.ping"]
    assert timeouts(metrics, "svc.charge") - before["svc.charge"] == 1


def test_a_timeout_that_is_not_above_zero_is_refused():
    bus, _ = memory_bus()
    with pytest.raises(ConfigurationError, match="timeout"):
        bus.subscribe(Ping, _nothing, timeout=0)
    with pytest.raises(ValueError, match="handler_timeout"):
        Settings.model_validate({"handler_timeout": 0})


async def _nothing(message: Ping) -> None:
    pass


def _bounded(seconds: float, handler: Handler) -> tuple[HandlerDeadlines, Bounded]:
    deadlines = HandlerDeadlines()
    series = handler_timeouts.series({"destination": "test.unit"})
    return deadlines, deadlines.bounded(handler, seconds, "unit", series)


async def test_a_handler_that_swallows_its_cancellation_ends_as_it_returns():
    """It cannot be cut: what it returns stands, and its task is left uncancelled."""
    cut = asyncio.Event()

    async def stubborn(message: Ping) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cut.set()

    deadlines, run = _bounded(0.2, stubborn)
    sweep = asyncio.create_task(deadlines.sweep())
    try:
        task = asyncio.create_task(run(Ping(n=1)))
        await asyncio.wait_for(task, 5)
        assert cut.is_set()
        assert task.cancelling() == 0
    finally:
        sweep.cancel()


async def test_a_cut_handler_cancelled_from_outside_too_stays_cancelled():
    """A drain cancelling a handler the sweep cut at the same moment wins: CancelledError,
    not a failed delivery."""

    async def hang(message: Ping) -> None:
        await asyncio.Event().wait()

    deadlines, run = _bounded(0.2, hang)
    task = asyncio.create_task(run(Ping(n=1)))
    await asyncio.sleep(0.3)  # past its deadline, before any sweep
    sweep = asyncio.create_task(deadlines.sweep())
    await asyncio.sleep(0)  # the sweep's first round cuts it; the handler has not run since
    task.cancel()
    try:
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        sweep.cancel()


async def test_an_error_of_the_handler_is_not_a_timeout():
    async def fails(message: Ping) -> None:
        raise TimeoutError("a broker did not answer")

    _, run = _bounded(5, fails)
    with pytest.raises(TimeoutError) as raised:
        await run(Ping(n=1))
    assert not isinstance(raised.value, HandlerTimeoutError)
    assert not issubclass(HandlerTimeoutError, TimeoutError)
