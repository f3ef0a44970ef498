"""What every acking transport promises, run on each of them with real brokers."""

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from app.bus import Bus
from app.messages import Envelope, QoS, encode
from app.qos.dead_letters import DeadLetterStore
from app.settings import Settings
from app.testing import eventually
from app.transports.registry import register
from tests.transports import throwaway
from tests.transports.conftest import Charge, Ping, Running, bus_settings, running_bus
from tests.transports.test_redis import redis_settings

__all__ = ["bus_settings", "redis_settings"]  # the fixtures, shared with the transport tests

ROOT = Path(__file__).resolve().parents[2]

BROKERS = ["jetstream", "redis"]
"""Transports with a broker: what crosses processes (two instances, a killed consumer)."""
ALL = ["memory", "throwaway", *BROKERS]
"""Every transport the in-process contract runs on; `throwaway` is one added from outside
app/transports (tests/transports/throwaway), to show that a package and a `register` are all
a new transport takes."""


def _settings(request) -> Callable[..., Settings]:
    """Settings for a bus whose QoS 1 and 2 ride on the transport under test; a delivery (or
    entry) left alone for about a second goes to another instance."""
    if request.param == "jetstream":
        make = request.getfixturevalue("bus_settings")
        return lambda **overrides: make(**{"ack_wait": 1, **overrides})
    if request.param == "redis":
        make = request.getfixturevalue("redis_settings")
        return lambda **overrides: make(**{"redis_claim_idle": 1, **overrides})
    make = request.getfixturevalue("bus_settings")
    if request.param == "throwaway":
        register(throwaway.SPEC)
    local = {"qos1_transport": request.param, "qos2_transport": request.param}
    return lambda **overrides: make(**{**local, **overrides})


@pytest.fixture(params=BROKERS)
def contract_settings(request) -> Callable[..., Settings]:
    return _settings(request)


@pytest.fixture(params=ALL)
def any_settings(request) -> Callable[..., Settings]:
    return _settings(request)


def dead_letter_store(running: Running, settings: Settings) -> DeadLetterStore:
    store = running.transports.by_name[settings.qos1_transport].dead_letters
    assert store is not None
    return store


async def test_a_delivery_is_acked_only_after_its_handler_returns(any_settings):
    """The first delivery's handler fails: the message comes again, and nothing is lost."""
    tries: list[int] = []

    async def handle(message: Ping) -> None:
        tries.append(message.n)
        if len(tries) == 1:
            raise ValueError("not yet")

    settings = any_settings()
    async with running_bus(settings, lambda bus: bus.subscribe(Ping, handle)) as running:
        await running.bus.publish(Ping(n=1))
        await eventually(lambda: tries == [1, 1], message="a second delivery after the failure")
        await asyncio.sleep(1.5)  # acked after the second: no third
        dead = (await dead_letter_store(running, settings).list(5, None)).total
    assert tries == [1, 1]
    assert dead == 0


async def test_a_handler_that_always_fails_ends_as_a_dead_letter_after_max_deliveries(
    any_settings,
):
    tries: list[int] = []

    async def handle(message: Ping) -> None:
        tries.append(message.n)
        raise ValueError("cannot handle")

    settings = any_settings(max_deliver=3)
    async with running_bus(settings, lambda bus: bus.subscribe(Ping, handle)) as running:
        await running.bus.publish(Ping(n=1))
        store = dead_letter_store(running, settings)
        await eventually(lambda: has_dead_letters(store, 1), timeout=15, message="a dead letter")
        page = await store.list(10, None)
        await asyncio.sleep(0.5)
    assert tries == [1, 1, 1]
    (item,) = page.items
    assert item.deliveries == 3
    assert item.reason == "max_deliveries"
    assert item.error == "ValueError: cannot handle"
    assert item.type == "Ping"
    assert item.subject == "svc.ping"


async def test_qos2_effects_apply_once_despite_duplicates(any_settings, metrics):
    """Each message published twice (the publisher's dedupe drops the second), one republished
    past the broker's dedupe (a fresh dedupe id), and one delivery whose ack is lost after its
    effect: every effect happens exactly once."""
    effects: list[int] = []
    forced: set[str] = set()
    charges = [Charge(n=n) for n in range(20)]
    repeat = charges[3].message_id

    async def handle(message: Charge) -> None:
        effects.append(message.n)

    def setup(bus: Bus) -> None:
        bus.subscribe(Charge, handle)
        _, subscription = bus._subscriptions[0]
        inner = subscription.handler

        async def ack_lost_once(envelope, delivery):
            applied = await inner(envelope, delivery)
            if envelope.message_id == repeat and repeat not in forced:
                forced.add(repeat)
                raise ValueError("ack lost after the effect")
            return applied

        object.__setattr__(subscription, "handler", ack_lost_once)

    settings = any_settings()
    before = metrics.value("qosmesh.dedupe.hits", side="receiver")
    async with running_bus(settings, setup) as running:
        for charge in charges:
            await running.bus.publish(charge)
            await running.bus.publish(charge)
        transport = running.transports.by_name[settings.qos2_transport]
        await transport.publish(fresh_copy(running, charges[7]), QoS.EXACTLY_ONCE)
        await eventually(lambda: sorted(set(effects)) == list(range(20)), timeout=15)
        await eventually(
            lambda: metrics.value("qosmesh.dedupe.hits", side="receiver") - before >= 2,
            message="the repeat and the fresh copy recognised",
        )
        await asyncio.sleep(0.5)
    assert sorted(effects) == list(range(20))
    assert forced == {repeat}


def fresh_copy(running: Running, message: Charge) -> Envelope:
    """`message` again under a new broker dedupe id: as sent after the dedupe window."""
    again = encode(message, QoS.EXACTLY_ONCE, running.bus.subject(Charge))
    return Envelope(
        headers={**again.headers, "Nats-Msg-Id": f"fresh-{message.message_id}"},
        body=again.body,
        subject=again.subject,
        dedupe_id=f"fresh-{message.message_id}",
    )


async def test_handlers_in_parallel_never_exceed_the_concurrency_limit(any_settings):
    done: list[int] = []
    running_now: list[int] = [0]
    most: list[int] = [0]

    async def handle(message: Ping) -> None:
        running_now[0] += 1
        most[0] = max(most[0], running_now[0])
        await asyncio.sleep(0.02)
        running_now[0] -= 1
        done.append(message.n)

    settings = any_settings(consumer_concurrency=8)
    async with running_bus(settings, lambda bus: bus.subscribe(Ping, handle)) as running:
        await asyncio.gather(*(running.bus.publish(Ping(n=n)) for n in range(200)))
        await eventually(lambda: len(set(done)) == 200, timeout=30, message="200 handled")
    assert most[0] == 8


@pytest.mark.slow
async def test_every_message_is_handled_after_a_consumer_process_is_killed(
    contract_settings, tmp_path
):
    """1,000 messages, two consumer processes; one is SIGKILLed mid-stream, holding
    deliveries: the other handles every message (its broker redelivers or it reclaims)."""
    settings = contract_settings(publish_attempt_timeout=2, publish_deadline=15)
    out = tmp_path / "handled.txt"
    # 30 ms handlers, 8 at a time in each process: 1,000 take about 2 s, so the kill at 200
    # lands mid-stream even when this process is starved of CPU.
    wire = settings.model_dump(mode="json", exclude={"port", "data_dir"})
    wire["handler_seconds"] = 0.03
    if settings.redis_url is not None:  # dumped masked, as every secret
        wire["redis_url"] = settings.redis_url.get_secret_value()
    doomed = start_consumer({**wire, "data_dir": str(tmp_path / "a")}, out)
    survivor = start_consumer({**wire, "data_dir": str(tmp_path / "b")}, out)
    try:
        async with running_bus(settings) as publisher:
            publishing = asyncio.gather(*(publisher.bus.publish(Ping(n=n)) for n in range(1000)))
            await eventually(
                lambda: len(handled(out)) >= 200, timeout=30, interval=0.01, message="200 handled"
            )
            doomed.kill()
            doomed.wait()
            at_kill = len(set(handled(out)))
            await publishing
        assert at_kill < 1000, "the consumers finished before one could be killed"
        await eventually(
            lambda: set(handled(out)) == set(range(1000)), timeout=60, message="all 1,000"
        )
    finally:
        for proc in (doomed, survivor):
            proc.kill()
            proc.wait()
    seen = handled(out)
    print(f"\nkilled after {at_kill}; {len(seen)} deliveries, {len(seen) - 1000} again")


def start_consumer(settings: dict[str, object], out: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.transports.consumer_proc", json.dumps(settings), str(out)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def handled(out: Path) -> list[int]:
    if not out.exists():
        return []
    return [int(line) for line in out.read_text().split()]


async def has_dead_letters(store: DeadLetterStore, count: int) -> bool:
    return (await store.list(20, None)).total >= count


@pytest.mark.parametrize("kind", [Ping, Charge])
async def test_a_handler_running_through_a_drain_is_not_given_to_another_instance(
    contract_settings, kind
):
    """SIGTERM while a handler runs longer than the ack wait: the draining instance keeps its
    delivery alive until the handler ends, so the effect is applied once, by it."""
    effects: list[str] = []
    started = asyncio.Event()

    def handler(name: str):
        async def handle(message: Ping | Charge) -> None:
            effects.append(name)
            started.set()
            await asyncio.sleep(3)

        return handle

    settings = contract_settings(drain_timeout=6)
    async with (
        running_bus(settings, lambda bus: bus.subscribe(kind, handler("A"))) as a,
        running_bus(settings, lambda bus: bus.subscribe(kind, handler("B")), instance="i2") as b,
    ):
        await a.bus.publish(kind(n=1))
        await asyncio.wait_for(started.wait(), 10)
        leaving = a if effects == ["A"] else b
        await leaving.bus.stop(settings.drain_timeout)  # returns when the handler ended
        staying = b if leaving is a else a
        await staying.bus.publish(kind(n=2))
        await eventually(lambda: len(effects) == 2, timeout=10, message="the next message")
        await asyncio.sleep(1.5)  # past another ack wait: a redelivery would show by now
    assert effects[0] != effects[1]  # the first went to one instance, the second to the other
    assert len(effects) == 2, effects


async def test_a_copy_waiting_on_a_busy_claim_is_not_dead_lettered(contract_settings):
    """Two copies of one QoS 2 message (the broker's dedupe window passed, say): while one
    instance applies it, the other's copy waits for the claim instead of spending its
    deliveries on it, then is settled as a duplicate. Applied once, no dead letter."""
    effects: list[str] = []
    first = asyncio.Event()

    def handler(name: str):
        async def handle(message: Charge) -> None:
            effects.append(name)
            first.set()
            await asyncio.sleep(2.5)

        return handle

    settings = contract_settings(max_deliver=3)
    async with (
        running_bus(settings, lambda bus: bus.subscribe(Charge, handler("A"))) as a,
        running_bus(settings, lambda bus: bus.subscribe(Charge, handler("B")), instance="i2"),
    ):
        charge = Charge(n=1)
        await a.bus.publish(charge)
        await asyncio.wait_for(first.wait(), 10)
        transport = a.transports.by_name[settings.qos2_transport]
        again = encode(charge, QoS.EXACTLY_ONCE, a.bus.subject(Charge))
        copy = Envelope(
            headers={**again.headers, "Nats-Msg-Id": "copy-2"},
            body=again.body,
            subject=again.subject,
            dedupe_id="copy-2",
        )
        await transport.publish(copy, QoS.EXACTLY_ONCE)  # a second copy in the stream
        store = transport.dead_letters
        assert store is not None

        await asyncio.sleep(4)  # the copy waited out the claim and was settled by now
        dead = (await store.list(10, None)).total
    assert effects in (["A"], ["B"])
    assert dead == 0
