"""FastStream 0.7 doing the Messaging and Redis rows' work, written to its documented API as its
users would: the FastStream column of those tables.

Every run has a fresh broker and fresh stream names, as the qosmesh and raw runs do. Messages are
the qosmesh rows' own pydantic models, built before the clock starts. Subscribers ack after the
handler returns and nack (leave the message for redelivery) when it raises: qosmesh's QoS 1
contract. FastStream lives in .venv-bench only; where it is missing, `available` gives None and
the column shows "-".
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence

from pydantic import BaseModel

from bench.cases.common import Blob, Clock, Counter, Env, NoticeBlob, rate, unique

try:
    from faststream import AckPolicy  # type: ignore[import-not-found,unused-ignore]
    from faststream.nats import (  # type: ignore[import-not-found,unused-ignore]
        JStream,
        NatsBroker,
        PullSub,
    )
    from faststream.redis import (  # type: ignore[import-not-found,unused-ignore]
        RedisBroker,
        StreamSub,
    )
except ImportError:
    INSTALLED = False
else:
    INSTALLED = True

# FastStream logs each message received and processed, and each subscriber task's end, at INFO;
# qosmesh and the raw clients log nothing per message. Its documented switch is a logger of your
# own: this one passes warnings and errors.
LOGGER = logging.getLogger("bench.faststream")
LOGGER.setLevel(logging.WARNING)
PULL_BATCH = 256  # as the raw consumer's fetch and qosmesh's largest pull request
PULL_TIMEOUT = 1.0  # as the raw consumer's: how long a pull waits to fill its batch
GROUP, CONSUMER = "g", "c"

Run = Callable[[], Awaitable[float]]


def available(run: Run) -> Run | None:
    """`run` where FastStream is installed; else None, and the peer column shows "-"."""
    if INSTALLED:
        return run
    _say_missing()
    return None


@functools.cache
def _say_missing() -> None:
    print("  FastStream missing, no peer column: `python3 dev.py bench` installs it", flush=True)


# -- NATS ------------------------------------------------------------------------------------


def _nats(env: Env) -> NatsBroker:
    return NatsBroker(env.nats_url, logger=LOGGER)


async def core_publish(env: Env) -> float:
    """QoS 0: `broker.publish` on core NATS, then one flush."""
    msgs = [NoticeBlob(data="x" * env.size) for _ in range(env.messages)]
    subject = unique("fs.q0")
    async with _nats(env) as broker:
        client = await broker.connect()
        with Clock() as clock:
            for msg in msgs:
                await broker.publish(msg, subject)
            await client.flush()
    return rate(env.messages, clock.seconds)


async def _publish_windows(
    broker: NatsBroker, msgs: Sequence[BaseModel], subject: str, window: int
) -> None:
    """FastStream has no async publish: `window` publishes at a time, each awaiting its PubAck."""
    for start in range(0, len(msgs), window):
        batch = msgs[start : start + window]
        await asyncio.gather(*(broker.publish(msg, subject, stream=subject) for msg in batch))


async def jetstream_publish(env: Env, count: int, window: int | None) -> float:
    """QoS 1: `broker.publish(..., stream=)` awaiting each PubAck, or `window` at a time."""
    msgs = [Blob(data="x" * env.size) for _ in range(count)]
    subject = unique("fs-q1")  # also the stream's name
    broker = _nats(env)
    broker.publisher(subject, stream=JStream(subject))  # declares the stream at start
    async with broker:
        await broker.start()
        with Clock() as clock:
            if window is None:
                for msg in msgs:
                    await broker.publish(msg, subject, stream=subject)
            else:
                await _publish_windows(broker, msgs, subject, window)
        await (await broker.connect()).jetstream().delete_stream(subject)
    return rate(count, clock.seconds)


async def jetstream_e2e(env: Env, count: int) -> float:
    """QoS 1 end to end: a durable pull subscriber handling the model, while publishing as
    `jetstream_publish` does with a window; the clock stops at the last handled message."""
    msgs = [Blob(data="x" * env.size) for _ in range(count)]
    subject = unique("fs-e2e")  # also the stream's and the consumer's name
    counter = Counter(count)

    async def handle(_: Blob) -> None:
        counter.hit()

    broker = _nats(env)
    subscriber = broker.subscriber(
        subject,
        stream=JStream(subject),
        durable=subject,
        pull_sub=PullSub(batch_size=PULL_BATCH, timeout=PULL_TIMEOUT),
        ack_policy=AckPolicy.NACK_ON_ERROR,
    )
    subscriber(handle)
    async with broker:
        await broker.start()
        with Clock() as clock:
            await _publish_windows(broker, msgs, subject, env.window)
            await counter.wait()
        await subscriber.stop()  # before its stream goes
        await (await broker.connect()).jetstream().delete_stream(subject)
    return rate(count, clock.seconds)


# -- Redis Streams ---------------------------------------------------------------------------


def _redis(env: Env) -> RedisBroker:
    return RedisBroker(env.redis_url, logger=LOGGER)


async def _fill(
    broker: RedisBroker, key: str, msgs: Sequence[BaseModel], batch: int, maxlen: int
) -> None:
    """FastStream's bulk publishing: `broker.publish(..., pipeline=)`, one pipeline per batch."""
    client = await broker.connect()
    for start in range(0, len(msgs), batch):
        async with client.pipeline(transaction=False) as pipe:
            for msg in msgs[start : start + batch]:
                await broker.publish(msg, stream=key, maxlen=maxlen, pipeline=pipe)
            await pipe.execute()


async def redis_publish(env: Env, batch: int, maxlen: int) -> float:
    """XADD through `broker.publish(..., stream=, pipeline=)`, `batch` per pipeline."""
    msgs = [Blob(data="x" * env.size) for _ in range(env.messages)]
    key = unique("fs.rp")
    async with _redis(env) as broker:
        with Clock() as clock:
            await _fill(broker, key, msgs, batch, maxlen)
        await (await broker.connect()).delete(key)
    return rate(env.messages, clock.seconds)


async def redis_consume(env: Env, batch: int, maxlen: int) -> float:
    """A consumer-group `StreamSub` handling the model, `batch` entries per XREADGROUP, over a
    stream filled beforehand; timed from a started broker to the last handled message, as the
    qosmesh row is."""
    key = unique("fs.rc")
    counter = Counter(env.messages)

    async def handle(_: Blob) -> None:
        counter.hit()

    # FastStream creates a missing group at `$` (new entries only): the group is made first, at
    # the stream's start, as a deployment would before the backlog it should read.
    async with _redis(env) as filler:
        await (await filler.connect()).xgroup_create(key, GROUP, id="0", mkstream=True)
        await _fill(
            filler, key, [Blob(data="x" * env.size) for _ in range(env.messages)], batch, maxlen
        )
    broker = _redis(env)
    subscriber = broker.subscriber(
        stream=StreamSub(key, group=GROUP, consumer=CONSUMER, max_records=batch),
        ack_policy=AckPolicy.NACK_ON_ERROR,
    )
    subscriber(handle)
    async with broker:
        await broker.start()
        with Clock() as clock:
            await counter.wait()
        await subscriber.stop()  # before its stream goes
        await (await broker.connect()).delete(key)
    return rate(env.messages, clock.seconds)
