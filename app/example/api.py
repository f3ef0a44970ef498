"""The example's HTTP commands and queries: orders and their payments."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, HTTPException
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from app.database.http_keys import TransactionalCommand, fingerprint
from app.example import orders, stats
from app.example.messages import OrderPlaced, PaymentCaptured, PaymentDue
from app.example.state import ExampleDep
from app.messages import new_message_id

router = APIRouter(tags=["orders"])


IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=256)]
RequiredIdempotencyKey = Annotated[str, Header(alias="Idempotency-Key", max_length=256)]
_UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: {"description": "the database did not answer; retry (same Idempotency-Key)"}
}


def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("must be a number, not true or false")
    return value


Whole = Annotated[int, BeforeValidator(_not_bool)]
"""A JSON integer (604 or 604.0, as JSON Schema's `integer` allows); `true` is not 1."""


class PlaceOrder(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # PostgreSQL text cannot hold NUL: refused here, naming the field, not by the database.
    sku: str = Field(min_length=1, max_length=64, pattern=r"^[^\x00]+$")
    quantity: Whole = Field(ge=1, le=10000)


class OrderAccepted(BaseModel):
    order_id: str
    message_id: str
    status: Literal["pending"] = "pending"


class CapturePayment(BaseModel):
    model_config = ConfigDict(extra="forbid")

    amount: Whole = Field(gt=0, le=10**12)


class PaymentAccepted(BaseModel):
    order_id: str
    payment_id: str
    message_id: str
    status: Literal["accepted"] = "accepted"


class OrderView(BaseModel):
    order_id: str
    sku: str
    quantity: int
    status: Literal["pending", "confirmed", "cancelled"]
    paid: int
    payments_accepted: int
    created_at: datetime
    updated_at: datetime


@router.post(
    "/orders",
    status_code=202,
    response_model=OrderAccepted,
    responses={409: {}, **_UNAVAILABLE},
)
async def place_order(
    body: PlaceOrder, example: ExampleDep, idempotency_key: IdempotencyKey = None
) -> Any:
    """Record the order as pending and write `OrderPlaced` (QoS 1) to the outbox, in one
    transaction: the event is published once the transaction commits, the broker there or
    not, and a handler confirms the order. With APP_EXAMPLE_PAYMENT_TIMEOUT set, a delayed
    `PaymentDue` goes with it: the order is cancelled then unless a payment was accepted."""
    async with example.database.transaction() as session:
        fp = fingerprint(body.model_dump()) if idempotency_key is not None else ""
        command = await TransactionalCommand.begin(session, "POST /orders", idempotency_key, fp)
        if command.replay is not None:
            return command.replay
        order_id, message_id = new_message_id(), new_message_id()
        await orders.add_order(session, order_id, body.sku, body.quantity)
        event = OrderPlaced(
            message_id=message_id, order_id=order_id, sku=body.sku, quantity=body.quantity
        )
        await example.bus.publish(event, session=session, ordering_key=order_id)
        if example.payment_timeout is not None:
            due = PaymentDue(order_id=order_id)
            await example.bus.publish(due, session=session, delay=example.payment_timeout)
        return await command.answer(202, OrderAccepted(order_id=order_id, message_id=message_id))


@router.get("/orders/stats", response_model=stats.OrderStats, responses={404: {}})
async def get_order_stats(example: ExampleDep) -> Any:
    """The order summary, as the instance holding the `order-stats` lease last wrote it (every
    5 s), with that lease's fencing token."""
    async with example.database.transaction() as session:
        summary = await stats.read(session)
    if summary is None:
        raise HTTPException(404, "No summary yet")
    return summary


@router.get("/orders/{order_id}", response_model=OrderView, responses={404: {}})
async def get_order(order_id: str, example: ExampleDep) -> Any:
    async with example.database.transaction() as session:
        order = await orders.get_order(session, order_id)
    if order is None:
        raise HTTPException(404, "Order not found")
    return order


@router.post(
    "/orders/{order_id}/payments",
    status_code=202,
    response_model=PaymentAccepted,
    responses={
        404: {"description": "no such order"},
        409: {
            "description": "the order was cancelled (unpaid past APP_EXAMPLE_PAYMENT_TIMEOUT), "
            "or the Idempotency-Key was used with another body"
        },
        **_UNAVAILABLE,
    },
)
async def capture_payment(
    order_id: str,
    body: CapturePayment,
    example: ExampleDep,
    idempotency_key: RequiredIdempotencyKey,
) -> Any:
    """Write `PaymentCaptured` (QoS 2) to the outbox; the key is the payment id, applied once.
    A cancelled order takes no payment (409); an accepted one keeps the order from being
    cancelled."""
    async with example.database.transaction() as session:
        if not await orders.exists(session, order_id):
            raise HTTPException(404, "Order not found")
        scope = "POST /orders/{order_id}/payments"
        fp = fingerprint(order_id, body.model_dump())
        command = await TransactionalCommand.begin(session, scope, idempotency_key, fp)
        if command.replay is not None:
            return command.replay
        if not await orders.accept_payment(session, order_id):
            raise HTTPException(409, "The order was cancelled: it was not paid in time")
        message_id = new_message_id()
        payment = PaymentCaptured(
            message_id=message_id,
            order_id=order_id,
            payment_id=idempotency_key,
            amount=body.amount,
        )
        await example.bus.publish(payment, session=session, ordering_key=order_id)
        answer = PaymentAccepted(
            order_id=order_id, payment_id=idempotency_key, message_id=message_id
        )
        return await command.answer(202, answer)
