"""The work of `POST /orders`, as the HTTP peers do it: the same body, record and event as the
example's (app/example), written the way a FastAPI service without qosmesh would write them."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import uvicorn
from fastapi import FastAPI
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from pydantic import BaseModel, ConfigDict, Field


@dataclass(frozen=True, slots=True)
class Names:
    """Where one peer keeps its orders: its own subject, stream, bucket and consumer."""

    service: str

    @property
    def subject(self) -> str:
        return f"{self.service}.order_placed"

    @property
    def stream(self) -> str:
        return f"{self.service.upper()}_ORDER_PLACED"

    @property
    def bucket(self) -> str:
        return f"{self.service}_orders"

    @property
    def durable(self) -> str:
        return f"{self.service}__order_placed"


def _now() -> datetime:
    return datetime.now(UTC)


class PlaceOrder(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sku: str = Field(min_length=1, max_length=64)
    quantity: int = Field(ge=1, le=10000)


class OrderAccepted(BaseModel):
    order_id: str
    message_id: str
    status: Literal["pending"] = "pending"


class Order(BaseModel):
    order_id: str
    sku: str
    quantity: int
    status: Literal["pending", "confirmed"] = "pending"
    paid: int = 0
    created_at: datetime = Field(default_factory=_now)
    updated_at: datetime = Field(default_factory=_now)


class OrderPlaced(BaseModel):
    message_id: str
    order_id: str
    sku: str
    quantity: int


def serve(build: Callable[[str, Names], FastAPI], argv: list[str]) -> int:
    """`PORT NATS_URL SERVICE`: run the service `build` makes under uvicorn."""
    port, nats_url, service = int(argv[0]), argv[1], argv[2]
    uvicorn.run(build(nats_url, Names(service)), host="127.0.0.1", port=port, log_level="warning")
    return 0


def new_id() -> str:
    return uuid.uuid4().hex


async def create(kv: KeyValue, order: Order) -> None:
    with contextlib.suppress(KeyWrongLastSequenceError):  # the handler recorded it first
        await kv.create(order.order_id, order.model_dump_json().encode())


async def confirm(kv: KeyValue, event: OrderPlaced) -> None:
    """Mark the order confirmed by compare-and-set, creating it when the event came first."""
    for _ in range(20):
        try:
            entry = await kv.get(event.order_id)
            order, revision = Order.model_validate_json(entry.value or b"{}"), entry.revision
        except KeyNotFoundError:
            order = Order(order_id=event.order_id, sku=event.sku, quantity=event.quantity)
            revision = None
        if order.status == "confirmed":
            return
        data = order.model_copy(update={"status": "confirmed", "updated_at": _now()})
        value = data.model_dump_json().encode()
        try:
            if revision is None:
                await kv.create(event.order_id, value)
            else:
                await kv.update(event.order_id, value, last=revision)
            return
        except KeyWrongLastSequenceError:
            continue
    raise RuntimeError(f"order {event.order_id} kept changing")
