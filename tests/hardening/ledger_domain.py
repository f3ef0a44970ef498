"""Two services for the NATS permission tests (APP_DOMAIN=tests.hardening.ledger_domain), told
apart by APP_SERVICE_NAME.

`orders` publishes on `POST /notes {"note": str, "delay": float}`: an `OrderNoted` (QoS 1, after
`delay` seconds when given), an `OrderSettled` (QoS 2) and an `OrderPinged` (QoS 0). `billing`
handles all three, competing for the first two with its other instances and each instance
taking every `OrderSettled` (broadcast); each handler appends `<kind> <note>` to the file at
$LEDGER_FILE. A note `poison` fails its handler: dead-lettered on its last delivery.
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


class OrderNoted(Message):
    subject: ClassVar[str | None] = "orders.order_noted"
    note: str


class OrderSettled(Message):
    subject: ClassVar[str | None] = "orders.order_settled"
    qos: ClassVar[QoS] = QoS.EXACTLY_ONCE
    note: str


class OrderPinged(Message):
    subject: ClassVar[str | None] = "orders.order_pinged"
    qos: ClassVar[QoS] = QoS.AT_MOST_ONCE
    note: str


class Note(BaseModel):
    note: str
    delay: float = 0.0


router = APIRouter()


@router.post("/notes", status_code=202)
async def note(body: Note, bus: BusDep) -> dict[str, str]:
    delay = timedelta(seconds=body.delay) if body.delay else None
    await bus.publish(OrderNoted(note=body.note), delay=delay)
    await bus.publish(OrderSettled(note=body.note))
    await bus.publish(OrderPinged(note=body.note))
    return {"note": body.note}


def _record(kind: str, note: str) -> None:
    if note == "poison":
        raise RuntimeError("a poison note")
    with open(os.environ["LEDGER_FILE"], "a") as ledger:
        ledger.write(f"{kind} {note}\n")


async def setup(bus: Bus, brokers: Brokers, settings: Settings) -> None:
    if settings.service_name != "billing":
        bus.publishes(OrderNoted, OrderSettled, OrderPinged)
        return

    @bus.handler(OrderNoted)
    async def noted(event: OrderNoted) -> None:
        _record("noted", event.note)

    @bus.handler(OrderSettled, broadcast=True)
    async def settled(event: OrderSettled) -> None:
        _record("settled", event.note)

    @bus.handler(OrderPinged)
    async def pinged(event: OrderPinged) -> None:
        _record("pinged", event.note)
