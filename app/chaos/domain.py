"""The domain the fault schedules run (APP_DOMAIN=app.chaos.domain): the example, plus handlers
whose every execution leaves a line, so that what the example's inbox hides shows here.

- `POST /chaos/charges {"id"}` publishes `Charged` (QoS 2) with the message id `id`; its
  handler runs under a claim in the KV or Redis store (no inbox), so a second run of it is a
  second line; it works on for 50-300 ms after its line, so faults find done marks to break.
- `POST /chaos/steps {"key", "n", "id"}` writes `Stepped` (QoS 1) to the outbox with the
  ordering key `key`; its handler logs every delivery.
- `POST /chaos/batches {"id", "count"}` publishes `count` `Charged` with `publish_many`, the
  message ids `<id>-0`, `<id>-1`, ...
- `POST /chaos/reminders {"id", "delay"}` publishes `Reminded` (QoS 2) due `delay` seconds
  later (by the broker's clock); `DELETE /chaos/reminders/{id}` cancels it and answers whether
  it can no longer fire.
- `POST /chaos/pings {"id"}` publishes `Pinged` (QoS 0); its handler logs every delivery.
- The singleton `chaos-lease` logs its token and the time it read it, every 0.2 s.

Each line is one JSON object appended to the file at $QM_CHAOS_LOG (one per instance), with the
instance's index ($QM_CHAOS_INSTANCE), its pid, the wall time `w` and the monotonic time `t`:
the checker reads them all. The monotonic clock is the host's, shared by every process and
never skewed by the clock faults (libfaketime leaves it alone), so lines of different instances
compare by it.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import random
import time
from datetime import timedelta
from typing import Any, ClassVar

from fastapi import APIRouter
from pydantic import BaseModel, Field

from app import example
from app.brokers import Brokers
from app.bus import Bus
from app.coordination import Singleton
from app.example.state import Example, ExampleDep
from app.messages import Message, QoS
from app.settings import Settings

USES_DATABASE = True
MIGRATIONS = example.MIGRATIONS
LEASE = "chaos-lease"
LEASE_EVERY = 0.2


class Charged(Message):
    subject: ClassVar[str | None] = "chaos.charged"
    qos: ClassVar[QoS] = QoS.EXACTLY_ONCE


class Stepped(Message):
    subject: ClassVar[str | None] = "chaos.stepped"
    key: str
    n: int


class Reminded(Message):
    subject: ClassVar[str | None] = "chaos.reminded"
    qos: ClassVar[QoS] = QoS.EXACTLY_ONCE


class Pinged(Message):
    subject: ClassVar[str | None] = "chaos.pinged"
    qos: ClassVar[QoS] = QoS.AT_MOST_ONCE


MessageId = Field(min_length=1, max_length=128, pattern=r"^[-a-zA-Z0-9_]+$")


class Charge(BaseModel):
    id: str = MessageId


class Step(BaseModel):
    key: str = MessageId
    n: int = Field(ge=0)
    id: str = MessageId


class Batch(BaseModel):
    id: str = MessageId
    count: int = Field(ge=1, le=20)


class Ping(BaseModel):
    id: str = MessageId


class Remind(BaseModel):
    id: str = MessageId
    delay: float = Field(gt=0, le=3600)


def record(kind: str, **fields: Any) -> None:
    """One line in this instance's effects log: appended with one write, so a line is whole
    or absent, and kept by the kernel even when the process is killed right after."""
    line = {"k": kind, "i": INSTANCE, "pid": os.getpid(), "w": time.time(), "t": time.monotonic()}
    line |= fields
    os.write(_log(), (json.dumps(line, separators=(",", ":")) + "\n").encode())


INSTANCE = int(os.environ.get("QM_CHAOS_INSTANCE", "-1"))


@functools.cache
def _log() -> int:
    path = os.environ.get("QM_CHAOS_LOG", "chaos-effects.log")
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


router = APIRouter(tags=["chaos"])
router.include_router(example.router)


@router.post("/chaos/charges", status_code=202)
async def charge(body: Charge, state: ExampleDep) -> dict[str, str]:
    await state.bus.publish(Charged(message_id=body.id))
    return {"message_id": body.id}


@router.post("/chaos/steps", status_code=202)
async def step(body: Step, state: ExampleDep) -> dict[str, str]:
    async with state.database.transaction() as session:
        message = Stepped(message_id=body.id, key=body.key, n=body.n)
        await state.bus.publish(message, session=session, ordering_key=body.key)
    return {"message_id": body.id}


@router.post("/chaos/batches", status_code=202)
async def batch(body: Batch, state: ExampleDep) -> dict[str, str]:
    charges = [Charged(message_id=f"{body.id}-{n}") for n in range(body.count)]
    await state.bus.publish_many(charges)
    return {"message_id": body.id}


@router.post("/chaos/pings", status_code=202)
async def ping(body: Ping, state: ExampleDep) -> dict[str, str]:
    await state.bus.publish(Pinged(message_id=body.id))
    return {"message_id": body.id}


@router.post("/chaos/reminders", status_code=202)
async def remind(body: Remind, state: ExampleDep) -> dict[str, str]:
    # A delay, not a time read off this host's clock: the broker's clock counts it down.
    await state.bus.publish(Reminded(message_id=body.id), delay=timedelta(seconds=body.delay))
    return {"message_id": body.id}


@router.delete("/chaos/reminders/{message_id}")
async def cancel(message_id: str, state: ExampleDep) -> dict[str, bool]:
    return {"cancelled": await state.bus.cancel(Reminded, message_id)}


async def setup(bus: Bus, brokers: Brokers, settings: Settings) -> Example:
    state = await example.setup(bus, brokers, settings)

    @bus.handler(Charged)
    async def charged(event: Charged) -> None:
        record("charge", id=event.message_id)
        # Work after the effect: a fault often strikes with the done mark still to write.
        await asyncio.sleep(random.uniform(0.05, 0.3))  # noqa: S311 (not a secret)

    @bus.handler(Stepped)
    async def stepped(event: Stepped) -> None:
        record("step", id=event.message_id, key=event.key, n=event.n)

    @bus.handler(Reminded)
    async def reminded(event: Reminded) -> None:
        record("fire", id=event.message_id)

    @bus.handler(Pinged)
    async def pinged(event: Pinged) -> None:
        record("ping", id=event.message_id)

    bus.publishes(Charged, Stepped, Reminded, Pinged)
    return state


def singletons(state: Example, instance: str) -> list[Singleton]:
    async def hold(token: int) -> None:
        # The time is read right after the token: the checker compares holders by it.
        record("lease", token=token)

    return [*example.singletons(state, instance), Singleton(LEASE, LEASE_EVERY, hold)]
