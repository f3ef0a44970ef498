"""The example's message handlers: they keep the orders read model up to date."""

from __future__ import annotations

from app.bus import Bus
from app.example.messages import OrderPlaced, PaymentCaptured
from app.example.orders import Order, OrderStore


def register(bus: Bus, orders: OrderStore) -> None:
    @bus.handler(OrderPlaced)
    async def confirm_order(event: OrderPlaced) -> None:
        seed = Order(order_id=event.order_id, sku=event.sku, quantity=event.quantity)

        def confirm(order: Order) -> Order | None:
            if order.status == "confirmed":
                return None
            return order.model_copy(update={"status": "confirmed"})

        await orders.change(seed, confirm)

    @bus.handler(PaymentCaptured)
    async def apply_payment(event: PaymentCaptured) -> None:
        current = await orders.get(event.order_id)
        if current is None:
            raise LookupError(f"order {event.order_id} is not recorded yet")

        def add(order: Order) -> Order | None:
            # The payment id is stored with the amount in one write, so even a redelivery
            # after a crash between the effect and the router's idempotency mark adds it once.
            if event.payment_id in order.payments:
                return None
            return order.model_copy(
                update={
                    "paid": order.paid + event.amount,
                    "payments": [*order.payments, event.payment_id],
                }
            )

        await orders.change(current, add)
