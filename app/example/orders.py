"""The orders and their payments, in PostgreSQL: written in the caller's transaction, beside
the outbox row of the event that says so."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Literal

from pydantic import BaseModel
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    func,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from app.observability.spans import step_span

ORDER_ID = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")

metadata = MetaData()
orders = Table(
    "example_orders",
    metadata,
    Column("order_id", String(26), primary_key=True),
    Column("sku", String(64), nullable=False),
    Column("quantity", Integer, nullable=False),
    Column("status", String(16), nullable=False, server_default="pending"),
    Column("paid", BigInteger, nullable=False, server_default=text("0")),
    Column("payments_accepted", Integer, nullable=False, server_default=text("0")),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)
payments = Table(
    "example_payments",
    metadata,
    Column("order_id", String(26), primary_key=True),
    Column("payment_id", String(256), primary_key=True),
    Column("amount", BigInteger, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)


class Order(BaseModel):
    order_id: str
    sku: str
    quantity: int
    status: Literal["pending", "confirmed", "cancelled"]
    paid: int
    payments_accepted: int
    created_at: datetime
    updated_at: datetime


# Statements built once: each call only binds its values (SQLAlchemy caches their SQL).
_ADD = orders.insert()
_GET = select(orders).where(orders.c.order_id == bindparam("order_id"))
_EXISTS = select(orders.c.order_id).where(orders.c.order_id == bindparam("order_id"))
_CONFIRM = (
    orders.update()
    .where(orders.c.order_id == bindparam("id"), orders.c.status == "pending")
    .values(status="confirmed", updated_at=func.now())
)
_CANCEL_UNPAID = (
    orders.update()
    .where(
        orders.c.order_id == bindparam("id"),
        orders.c.status != "cancelled",
        orders.c.paid == 0,
        orders.c.payments_accepted == 0,
    )
    .values(status="cancelled", updated_at=func.now())
)
_ACCEPT_PAYMENT = (
    orders.update()
    .where(orders.c.order_id == bindparam("id"), orders.c.status != "cancelled")
    .values(payments_accepted=orders.c.payments_accepted + 1)
    .returning(orders.c.order_id)
)
_PAY = insert(payments).on_conflict_do_nothing().returning(payments.c.payment_id)
_ADD_PAID = (
    orders.update()
    .where(orders.c.order_id == bindparam("id"))
    .values(paid=orders.c.paid + bindparam("amount"), updated_at=func.now())
)


async def add_order(session: AsyncConnection, order_id: str, sku: str, quantity: int) -> None:
    await session.execute(_ADD, {"order_id": order_id, "sku": sku, "quantity": quantity})


async def get_order(session: AsyncConnection, order_id: str) -> Order | None:
    if not ORDER_ID.match(order_id):
        return None
    row = (await session.execute(_GET, {"order_id": order_id})).first()
    return None if row is None else Order.model_validate(row._asdict())


async def exists(session: AsyncConnection, order_id: str) -> bool:
    if not ORDER_ID.match(order_id):
        return False
    found = await session.execute(_EXISTS, {"order_id": order_id})
    return found.first() is not None


async def confirm(session: AsyncConnection, order_id: str) -> None:
    with step_span("db update orders"):
        await session.execute(_CONFIRM, {"id": order_id})


async def cancel_unpaid(session: AsyncConnection, order_id: str) -> bool:
    """Cancel the order unless a payment was accepted for it; whether it was cancelled now."""
    with step_span("db update orders"):
        result = await session.execute(_CANCEL_UNPAID, {"id": order_id})
    return bool(result.rowcount)


async def accept_payment(session: AsyncConnection, order_id: str) -> bool:
    """Count a payment accepted for the order (its row locked until the transaction ends, so a
    cancellation waits for it and then finds it); False when the order is cancelled."""
    return (await session.execute(_ACCEPT_PAYMENT, {"id": order_id})).first() is not None


async def add_payment(
    session: AsyncConnection, order_id: str, payment_id: str, amount: int
) -> bool:
    """Add the amount to the order once per payment id; False when it was already added."""
    payment = {"order_id": order_id, "payment_id": payment_id, "amount": amount}
    if (await session.execute(_PAY, payment)).first() is None:
        return False
    await session.execute(_ADD_PAID, {"id": order_id, "amount": amount})
    return True
