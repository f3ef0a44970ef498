"""Delayed messages on every transport that keeps them: the server's schedules (ADR-51), the
lease holder's fallback on JetStream, and the sorted set on Redis; against real brokers."""

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import nats
import pytest
from nats.js.api import StorageType, StreamConfig

from app.bus import Bus
from app.coordination.scheduling import BACKLOG_EVERY
from app.errors import ConfigurationError
from app.instance.services import services_of
from app.messages import H_DELIVER_AT, Message, due_of, due_text, encode
from app.settings import Settings
from app.testing import eventually, running_app
from app.transports.base import MOVE_EVERY, Schedules
from tests.transports.conftest import Charge, Notice, Ping, Running, running_bus

MODES = ["native", "fallback", "redis"]


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def delay_settings(
    mode: str, bus_settings: Callable[..., Settings], request: pytest.FixtureRequest
) -> Callable[..., Settings]:
    """Settings for `mode`: JetStream with the server's schedules or the fallback, or Redis."""

    def make(**overrides: object) -> Settings:
        values: dict[str, object] = {"scheduler": "fallback" if mode == "fallback" else "native"}
        if mode == "redis":
            redis = request.getfixturevalue("redis_server")
            values.update(redis_url=redis.url, qos1_transport="redis", qos2_transport="redis")
        return bus_settings(**{**values, **overrides})

    return make


def schedules_of(running: Running, message_type: type[Message]) -> Schedules:
    _, transport = running.bus.route(message_type)
    assert transport.schedules is not None
    return transport.schedules


@contextlib.asynccontextmanager
async def moving(schedules: Schedules) -> AsyncIterator[None]:
    """What the runtime does on the lease holder: move the due messages every MOVE_EVERY."""

    stop = asyncio.Event()

    async def run() -> None:
        # Stopped by a flag between moves, so that stopping never cancels a call halfway.
        while not stop.is_set():
            with contextlib.suppress(Exception):
                await schedules.move_due(1)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), MOVE_EVERY)

    task = asyncio.create_task(run())
    try:
        yield
    finally:
        stop.set()
        done, _ = await asyncio.wait({task}, timeout=10)
        assert done, "the mover did not stop"


@contextlib.asynccontextmanager
async def delaying_bus(
    settings: Settings, setup: Callable[[Bus], None], moved: type[Message] = Ping
) -> AsyncIterator[Running]:
    """A running bus whose due messages are moved (where the broker does not fire them)."""
    async with running_bus(settings, setup) as running, moving(schedules_of(running, moved)):
        yield running


Arrivals = dict[str, list[tuple[float, Message]]]


def recording(arrivals: Arrivals, *types: type[Message]) -> Callable[[Bus], None]:
    def setup(bus: Bus) -> None:
        for message_type in types:

            async def handle(message: Message) -> None:
                arrivals.setdefault(message.message_id, []).append((time.time(), message))

            bus.subscribe(message_type, handle)

    return setup


async def wait_for(condition: Callable[[], bool], timeout: float, what: object = None) -> None:
    give_up = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < give_up, f"timed out: {what}"
        await asyncio.sleep(0.05)


async def test_delayed_messages_fire_no_earlier_than_due_and_within_a_second_and_a_half(
    delay_settings,
):
    """QoS 1 and 2, delays from 0.3 to 2.2 s: each arrives once, never before its time, with its
    message id, and its `qm-deliver-at` says when it was due."""
    arrivals: Arrivals = {}
    async with running_bus(delay_settings(), recording(arrivals, Ping, Charge)) as running:
        due: dict[str, datetime] = {}
        async with moving(schedules_of(running, Ping)):
            for n in range(20):
                message: Message = Ping(n=n) if n % 2 else Charge(n=n)
                delay = timedelta(seconds=0.3 + n * 0.1)
                due[message.message_id] = datetime.now(UTC) + delay
                await running.bus.publish(message, delay=delay)
            await wait_for(lambda: len(arrivals) == 20, timeout=10, what=arrivals)
            await asyncio.sleep(0.5)  # no second copy
    late = []
    for message_id, copies in arrivals.items():
        assert len(copies) == 1, message_id
        arrived, _ = copies[0]
        assert arrived >= due[message_id].timestamp(), f"{message_id} fired early"
        late.append(arrived - due[message_id].timestamp())
    late.sort()
    print(f"\nlate: median {late[10]:.3f} s, max {late[-1]:.3f} s")
    assert late[-1] < 1.5, late


async def test_cancel_takes_a_message_back_until_it_fires(delay_settings):
    arrivals: Arrivals = {}
    async with delaying_bus(delay_settings(), recording(arrivals, Ping)) as running:
        kept, cancelled = Ping(n=1), Ping(n=2)
        for message in (kept, cancelled):
            await running.bus.publish(message, delay=timedelta(seconds=1))
        assert await running.bus.cancel(Ping, cancelled.message_id) is True
        assert await running.bus.cancel(Ping, cancelled.message_id) is False
        assert await running.bus.cancel(Ping, "never-scheduled") is False
        await wait_for(lambda: kept.message_id in arrivals, timeout=5)
        await asyncio.sleep(1)
        assert list(arrivals) == [kept.message_id]
        assert await running.bus.cancel(Ping, kept.message_id) is False  # it fired


@pytest.mark.slow
async def test_the_same_message_scheduled_twice_fires_once(delay_settings):
    """A publish retried after a lost reply schedules nothing more (QoS 2 and 1 alike)."""
    arrivals: Arrivals = {}
    async with delaying_bus(delay_settings(), recording(arrivals, Charge), Charge) as running:
        charge = Charge(n=7)
        for _ in range(3):
            await running.bus.publish(charge, delay=timedelta(seconds=0.5))
        await wait_for(lambda: charge.message_id in arrivals, timeout=5)
        await asyncio.sleep(1.5)
    assert len(arrivals[charge.message_id]) == 1
    _, message = arrivals[charge.message_id][0]
    assert message == charge


@pytest.mark.slow
async def test_scheduled_messages_survive_a_broker_restart(
    delay_settings, mode, nats_server, request
):
    arrivals: Arrivals = {}
    settings = delay_settings(publish_attempts=10, publish_deadline=10)
    async with running_bus(settings, recording(arrivals, Ping, Charge)) as running:
        messages: list[Message] = [Ping(n=n) if n % 2 else Charge(n=n) for n in range(10)]
        for message in messages:
            await running.bus.publish(message, delay=timedelta(seconds=2))
        server = request.getfixturevalue("redis_server") if mode == "redis" else nats_server
        await asyncio.to_thread(server.restart)
        async with moving(schedules_of(running, Ping)):
            await wait_for(lambda: len(arrivals) == 10, timeout=20)
            await asyncio.sleep(1)
    assert sorted(arrivals) == sorted(m.message_id for m in messages)
    assert all(len(copies) == 1 for copies in arrivals.values())


@pytest.mark.slow
async def test_the_backlog_counts_the_messages_waiting(delay_settings):
    async with running_bus(delay_settings(), recording({}, Ping)) as running:
        schedules = schedules_of(running, Ping)
        for n in range(5):
            await running.bus.publish(Ping(n=n), at=datetime.now(UTC) + timedelta(hours=1))
        assert await schedules.backlog() == 5


async def test_qos_0_and_naive_times_are_refused(bus_settings):
    async with running_bus(bus_settings()) as running:
        with pytest.raises(ConfigurationError, match="QoS 0"):
            await running.bus.publish(Notice(n=1), delay=timedelta(seconds=1))
        with pytest.raises(ValueError, match="timezone-aware"):
            await running.bus.publish(Ping(n=1), at=datetime.now() + timedelta(seconds=1))
        with pytest.raises(ValueError, match="not both"):
            await running.bus.publish(Ping(n=1), delay=timedelta(seconds=1), at=datetime.now(UTC))


async def test_an_existing_stream_is_migrated_in_place_for_schedules(bus_settings, nats_server):
    """A stream made before delayed messages (one subject, no schedules) keeps its messages and
    its consumer, and takes delayed messages after the next start."""
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    await js.add_stream(
        StreamConfig(name="SVC_PING", subjects=["svc.ping"], storage=StorageType.FILE)
    )
    old = Ping(n=1)
    envelope = encode(old, old.qos, "svc.ping")
    await js.publish("svc.ping", envelope.body, headers=envelope.headers)
    await nc.close()

    arrivals: Arrivals = {}
    async with running_bus(bus_settings(), recording(arrivals, Ping)) as running:
        info = await running.brokers.js.stream_info("SVC_PING")
        assert info.config.subjects == ["svc.ping", "svc.ping.sched.*"]
        assert info.config.allow_msg_schedules is True
        delayed = Ping(n=2)
        await running.bus.publish(delayed, delay=timedelta(seconds=0.5))
        await wait_for(lambda: len(arrivals) == 2, timeout=5)
    assert set(arrivals) == {old.message_id, delayed.message_id}


def test_due_times_round_up_to_the_millisecond():
    due = datetime(2026, 12, 4, 10, 0, 0, 300_001, tzinfo=UTC)
    assert due_text(due) == "2026-12-04T10:00:00.301Z"
    assert due_of({H_DELIVER_AT: due_text(due)}) == due + timedelta(microseconds=999)
    assert due_of({}) is None


@pytest.mark.slow
async def test_the_backlog_is_a_gauge_every_instance_reads(settings_for, nats_server, metrics):
    """`qosmesh_scheduled_messages` shows what waits, read by every instance every 5 s."""
    settings = settings_for(nats_url=nats_server.url, domain="", service_name="svc")
    async with running_app(settings) as (app, _):
        bus = services_of(app).bus
        for n in range(3):
            await bus.publish(Ping(n=n), delay=timedelta(hours=1))

        def shown() -> bool:
            waiting: float = metrics.value(
                "qosmesh.scheduled.messages", **{"messaging.system": "nats"}
            )
            return waiting == 3

        await eventually(shown, timeout=BACKLOG_EVERY + 5)


@pytest.mark.slow
async def test_a_message_due_in_the_past_fires_at_once(delay_settings):
    """What an outbox row relayed late asks for: its time has passed, so now."""
    arrivals: Arrivals = {}
    async with delaying_bus(delay_settings(), recording(arrivals, Ping)) as running:
        late = Ping(n=1)
        sent = time.time()
        await running.bus.publish(late, at=datetime.now(UTC) - timedelta(seconds=30))
        await wait_for(lambda: late.message_id in arrivals, timeout=5)
    assert arrivals[late.message_id][0][0] - sent < 1.5


@pytest.mark.slow
async def test_a_cancelled_message_scheduled_again_stays_cancelled(delay_settings):
    """A publish retried after its message was cancelled (or fired) schedules nothing again
    within the duplicate window."""
    arrivals: Arrivals = {}
    async with delaying_bus(delay_settings(), recording(arrivals, Ping)) as running:
        ping = Ping(n=1)
        await running.bus.publish(ping, delay=timedelta(seconds=0.5))
        assert await running.bus.cancel(Ping, ping.message_id)
        await running.bus.publish(ping, delay=timedelta(seconds=0.5))
        await asyncio.sleep(1.5)
    assert arrivals == {}


@pytest.mark.slow
async def test_two_types_may_delay_messages_with_the_same_id(delay_settings):
    arrivals: Arrivals = {}
    async with delaying_bus(delay_settings(), recording(arrivals, Ping, Charge)) as running:
        ping, charge = Ping(n=1, message_id="shared-id"), Charge(n=2, message_id="shared-id")
        await running.bus.publish(ping, delay=timedelta(seconds=0.5))
        await running.bus.publish(charge, delay=timedelta(seconds=0.5))
        assert await running.bus.cancel(Charge, "shared-id")
        await wait_for(lambda: "shared-id" in arrivals, timeout=5)
        await asyncio.sleep(1)
    assert [type(message) for _, message in arrivals["shared-id"]] == [Ping]


async def test_a_delay_beyond_the_streams_max_age_is_refused_on_the_servers_schedules(
    bus_settings,
):
    async with running_bus(bus_settings(scheduler="native")) as running:
        with pytest.raises(ValueError, match="max age"):
            await running.bus.publish(Ping(n=1), delay=timedelta(days=7))


@pytest.mark.slow
async def test_an_instance_on_the_fallback_keeps_a_streams_schedules(bus_settings):
    """Schedules cannot be turned off on a stream: a fallback instance (or an older server's)
    starting on a stream the server's schedules use leaves it as it is, and works."""
    arrivals: Arrivals = {}
    async with running_bus(bus_settings(scheduler="native"), recording({}, Ping)):
        pass
    settings = bus_settings(scheduler="fallback")
    async with delaying_bus(settings, recording(arrivals, Ping)) as running:
        info = await running.brokers.js.stream_info("SVC_PING")
        assert info.config.allow_msg_schedules is True
        assert "svc.ping.sched.*" in (info.config.subjects or [])
        ping = Ping(n=1)
        await running.bus.publish(ping, delay=timedelta(seconds=0.3))
        await wait_for(lambda: ping.message_id in arrivals, timeout=5)


@pytest.mark.slow
async def test_a_cancel_racing_the_fire_is_told_the_truth(delay_settings):
    """40 messages due at the moment they are cancelled: one whose cancel said True never
    arrives; one whose cancel said False arrives at most once (it had fired, or its time had
    come as it was purged: the server fires and removes a schedule in two steps, so a purge
    then cannot promise anything); and some are cancelled in time."""
    arrivals: Arrivals = {}
    async with delaying_bus(delay_settings(), recording(arrivals, Ping)) as running:
        pings = [Ping(n=n) for n in range(40)]
        due = datetime.now(UTC) + timedelta(seconds=1)
        for ping in pings:
            await running.bus.publish(ping, at=due)
        await asyncio.sleep(max(0.0, (due - datetime.now(UTC)).total_seconds() - 0.3))
        cancelled: dict[str, bool] = {}
        for ping in pings:  # one by one, across the moment they fire
            cancelled[ping.message_id] = await running.bus.cancel(Ping, ping.message_id)
            await asyncio.sleep(0.01)
        await asyncio.sleep(2)
    for message_id, said in cancelled.items():
        copies = len(arrivals.get(message_id, []))
        assert copies == 0 if said else copies <= 1, (message_id, said, copies)
    assert any(cancelled.values()), "no cancel came in time: the race was not run"
    print(f"\n{sum(cancelled.values())} of 40 cancelled in time")
