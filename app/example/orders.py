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
    func,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

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
    status: Literal["pending", "confirmed"]
    paid: int
    created_at: datetime
    updated_at: datetime


async def add_order(session: AsyncSession, order_id: str, sku: str, quantity: int) -> None:
    await session.execute(orders.insert().values(order_id=order_id, sku=sku, quantity=quantity))


async def get_order(session: AsyncSession, order_id: str) -> Order | None:
    if not ORDER_ID.match(order_id):
        return None
    row = (await session.execute(select(orders).where(orders.c.order_id == order_id))).first()
    return None if row is None else Order.model_validate(row._asdict())


async def exists(session: AsyncSession, order_id: str) -> bool:
    if not ORDER_ID.match(order_id):
        return False
    found = await session.execute(select(orders.c.order_id).where(orders.c.order_id == order_id))
    return found.first() is not None


async def confirm(session: AsyncSession, order_id: str) -> None:
    with step_span("db update orders"):
        await session.execute(
            orders.update()
            .where(orders.c.order_id == order_id, orders.c.status == "pending")
            .values(status="confirmed", updated_at=func.now())
        )


async def add_payment(session: AsyncSession, order_id: str, payment_id: str, amount: int) -> bool:
    """Add the amount to the order once per payment id; False when it was already added."""
    added = await session.execute(
        insert(payments)
        .values(order_id=order_id, payment_id=payment_id, amount=amount)
        .on_conflict_do_nothing()
        .returning(payments.c.payment_id)
    )
    if added.first() is None:
        return False
    await session.execute(
        orders.update()
        .where(orders.c.order_id == order_id)
        .values(paid=orders.c.paid + amount, updated_at=func.now())
    )
    return True
