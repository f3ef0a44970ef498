"""The example's message contracts."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from app.messages import Message, QoS


class OrderPlaced(Message):
    """An order was accepted; QoS 1: every order is confirmed at least once."""

    order_id: str
    sku: str
    quantity: int


class PaymentCaptured(Message):
    """Money was taken for an order; QoS 2: the amount is added to the order exactly once."""

    qos: ClassVar[QoS] = QoS.EXACTLY_ONCE

    order_id: str
    payment_id: str
    amount: int = Field(gt=0)


class PaymentDue(Message):
    """Published, delayed by APP_EXAMPLE_PAYMENT_TIMEOUT, with every order: when it fires, the
    order is cancelled unless a payment was accepted for it meanwhile. QoS 1: the cancellation
    is idempotent."""

    order_id: str
