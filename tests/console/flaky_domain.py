"""A domain for the console's browser tests: `POST /flaky` publishes a FlakyJob; its handler
waits while the file at $FLAKY_HOLD exists (when that is set), fails while the file at
$FLAKY_FLAG exists, and otherwise appends the job's note to the file at $FLAKY_EFFECTS (one line
per time its effect applied)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from fastapi import APIRouter
from pydantic import BaseModel

from app.api.deps import BusDep
from app.brokers import Brokers
from app.bus import Bus
from app.messages import Message
from app.settings import Settings


class FlakyJob(Message):
    note: str


class Job(BaseModel):
    note: str


router = APIRouter()


@router.post("/flaky", status_code=202)
async def place(job: Job, bus: BusDep) -> dict[str, str]:
    message = FlakyJob(note=job.note)
    await bus.publish(message)
    return {"message_id": message.message_id}


async def setup(bus: Bus, brokers: Brokers, settings: Settings) -> None:
    flag = Path(os.environ["FLAKY_FLAG"])
    effects = Path(os.environ["FLAKY_EFFECTS"])
    hold = Path(os.environ["FLAKY_HOLD"]) if os.environ.get("FLAKY_HOLD") else None

    def apply(job: FlakyJob) -> None:
        if flag.exists():
            raise RuntimeError(f"the flag file {flag.name} is there")
        with effects.open("a") as out:
            out.write(job.note.replace("\n", " ") + "\n")

    bus.publishes(FlakyJob)

    @bus.handler(FlakyJob)
    async def handle(job: FlakyJob) -> None:
        while hold is not None and hold.exists():  # noqa: ASYNC110 (a file, not an event)
            await asyncio.sleep(0.1)
        await asyncio.to_thread(apply, job)
