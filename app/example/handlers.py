"""The example's message handlers: each runs in a database transaction with the inbox record
of its message, so its effect is applied once per message id."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncConnection

from app.bus import Bus
from app.example import orders
from app.example.messages import OrderPlaced, PaymentCaptured, PaymentDue


def register(bus: Bus) -> None:
    @bus.handler(OrderPlaced, transactional=True)
    async def confirm_order(event: OrderPlaced, session: AsyncConnection) -> None:
        await orders.confirm(session, event.order_id)

    @bus.handler(PaymentCaptured, transactional=True)
    async def apply_payment(event: PaymentCaptured, session: AsyncConnection) -> None:
        if not await orders.exists(session, event.order_id):
            raise LookupError(f"order {event.order_id} is not recorded yet")
        await orders.add_payment(session, event.order_id, event.payment_id, event.amount)

    @bus.handler(PaymentDue, transactional=True)
    async def cancel_if_unpaid(event: PaymentDue, session: AsyncConnection) -> None:
        await orders.cancel_unpaid(session, event.order_id)
