"""A service for the clock-skew test (APP_DOMAIN=tests.hardening.skew_domain).

`POST /charges {"n": int, "delay": float}` publishes a `Charged` (QoS 2), after `delay` seconds
when given. Every instance competes for them; the handler, under a QoS 2 claim (no inbox),
appends `<message id> <n>` to the file at $LEDGER_FILE: one line per effect applied.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import ClassVar

from fastapi import APIRouter
from pydantic import BaseModel

from app.api.deps import BusDep
from app.brokers import Brokers
from app.bus import Bus
from app.messages import Message, QoS
from app.settings import Settings


class Charged(Message):
    subject: ClassVar[str | None] = "skew.charged"
    qos: ClassVar[QoS] = QoS.EXACTLY_ONCE
    n: int


class Charge(BaseModel):
    n: int
    delay: float = 0.0


router = APIRouter()


@router.post("/charges", status_code=202)
async def charge(body: Charge, bus: BusDep) -> dict[str, str]:
    message = Charged(n=body.n)
    delay = timedelta(seconds=body.delay) if body.delay else None
    await bus.publish(message, delay=delay)
    return {"message_id": message.message_id}


async def setup(bus: Bus, brokers: Brokers, settings: Settings) -> None:
    @bus.handler(Charged)
    async def charged(event: Charged) -> None:
        # One short append, kept on the loop: the line is the effect whose count the test reads.
        with open(os.environ["LEDGER_FILE"], "a") as ledger:  # noqa: ASYNC230
            ledger.write(f"{event.message_id} {event.n}\n")
