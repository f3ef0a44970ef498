"""The example's HTTP commands and queries: orders and their payments."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from app.api.deps import BusDep
from app.api.idempotency_keys import fingerprint
from app.errors import PublishError
from app.example.messages import OrderPlaced, PaymentCaptured
from app.example.orders import Order
from app.example.state import ExampleDep
from app.messages import new_message_id

router = APIRouter(tags=["orders"])


IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=256)]
RequiredIdempotencyKey = Annotated[str, Header(alias="Idempotency-Key", max_length=256)]
_UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: {"description": "the broker did not confirm; retry (same Idempotency-Key)"}
}


class PlaceOrder(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sku: str = Field(min_length=1, max_length=64)
    quantity: int = Field(ge=1, le=10000)


class OrderAccepted(BaseModel):
    order_id: str
    message_id: str
    status: Literal["pending"] = "pending"


class CapturePayment(BaseModel):
    model_config = ConfigDict(extra="forbid")

    amount: int = Field(gt=0, le=10**12)


class PaymentAccepted(BaseModel):
    order_id: str
    payment_id: str
    message_id: str
    status: Literal["accepted"] = "accepted"


class OrderView(BaseModel):
    order_id: str
    sku: str
    quantity: int
    status: Literal["pending", "confirmed"]
    paid: int
    created_at: datetime
    updated_at: datetime


@router.post(
    "/orders",
    status_code=202,
    response_model=OrderAccepted,
    responses={409: {}, **_UNAVAILABLE},
)
async def place_order(
    body: PlaceOrder, bus: BusDep, example: ExampleDep, idempotency_key: IdempotencyKey = None
) -> Any:
    """Record the order as pending, then publish `OrderPlaced` (QoS 1) for a handler to confirm."""
    orders = example.orders
    plan = {"order_id": new_message_id(), "message_id": new_message_id()}
    command = await example.keys.command(
        "POST /orders", idempotency_key, fingerprint(body.model_dump()), plan
    )
    if command.replay is not None:
        return command.replay
    order_id, message_id = command.plan["order_id"], command.plan["message_id"]
    order = Order(order_id=order_id, sku=body.sku, quantity=body.quantity)
    event = OrderPlaced(
        message_id=message_id, order_id=order_id, sku=body.sku, quantity=body.quantity
    )
    try:
        await bus.publish(event)
    except PublishError:
        if not command.keyed:
            # Nobody can retry this one. The event may have been stored all the same (its ack
            # was lost): a tombstone keeps it from creating the order the client was refused.
            # Written in the background: the 503 is not held up by a second budget.
            orders.withdraw_later(order)
        raise
    # After the publish: a refused command leaves no pending order behind. The handler creates
    # the order from the event if it comes first; then this keeps the handler's record.
    await orders.create(order)
    return await command.answer(202, OrderAccepted(order_id=order_id, message_id=message_id))


@router.get("/orders/{order_id}", response_model=OrderView, responses={404: {}})
async def get_order(order_id: str, example: ExampleDep) -> Any:
    order = await example.orders.get(order_id)
    if order is None:
        raise HTTPException(404, "Order not found")
    return order


@router.post(
    "/orders/{order_id}/payments",
    status_code=202,
    response_model=PaymentAccepted,
    responses={404: {}, 409: {}, **_UNAVAILABLE},
)
async def capture_payment(
    order_id: str,
    body: CapturePayment,
    bus: BusDep,
    example: ExampleDep,
    idempotency_key: RequiredIdempotencyKey,
) -> Any:
    """Publish `PaymentCaptured` (QoS 2); the key is the payment id, applied once."""
    if await example.orders.get(order_id) is None:
        raise HTTPException(404, "Order not found")
    command = await example.keys.command(
        "POST /orders/{order_id}/payments",
        idempotency_key,
        fingerprint(order_id, body.model_dump()),
        {"message_id": new_message_id()},
    )
    if command.replay is not None:
        return command.replay
    message_id = command.plan["message_id"]
    await bus.publish(
        PaymentCaptured(
            message_id=message_id,
            order_id=order_id,
            payment_id=idempotency_key,
            amount=body.amount,
        )
    )
    answer = PaymentAccepted(order_id=order_id, payment_id=idempotency_key, message_id=message_id)
    return await command.answer(202, answer)
