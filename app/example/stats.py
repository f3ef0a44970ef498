"""The order summary: a singleton job (one instance at a time, under the lease `order-stats`)
counts the orders and writes the summary row with its lease's fencing token. The row keeps the
largest token written, so a holder that paused past its lease cannot overwrite its successor's
summary (docs/coordination.md)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel
from sqlalchemy import BigInteger, Column, DateTime, MetaData, Table, Text, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from app.coordination import Singleton
from app.errors import StaleTokenError
from app.example.orders import orders
from app.example.state import Example

EVERY = 5.0
NAME = "orders"

metadata = MetaData()
order_stats = Table(
    "example_order_stats",
    metadata,
    Column("name", Text, primary_key=True),
    Column("token", BigInteger, nullable=False),
    Column("computed_by", Text, nullable=False),
    Column("pending", BigInteger, nullable=False),
    Column("confirmed", BigInteger, nullable=False),
    Column("paid", BigInteger, nullable=False),
    Column("computed_at", DateTime(timezone=True), nullable=False),
)


class OrderStats(BaseModel):
    pending: int
    confirmed: int
    paid: int
    computed_at: datetime
    computed_by: str
    token: int


async def write(session: AsyncConnection, token: int, computed_by: str) -> None:
    """Count the orders and write the summary with `token`; StaleTokenError when the row
    already holds a newer token (this instance lost the lease meanwhile)."""
    counts = (
        await session.execute(
            select(
                func.count().filter(orders.c.status == "pending"),
                func.count().filter(orders.c.status == "confirmed"),
                func.coalesce(func.sum(orders.c.paid), 0),
            )
        )
    ).one()
    values = {
        "name": NAME,
        "token": token,
        "computed_by": computed_by,
        "pending": counts[0],
        "confirmed": counts[1],
        "paid": counts[2],
        "computed_at": func.now(),
    }
    statement = insert(order_stats).values(values)
    fenced = statement.on_conflict_do_update(
        index_elements=[order_stats.c.name],
        set_={k: statement.excluded[k] for k in values if k != "name"},
        where=order_stats.c.token <= statement.excluded.token,
    )
    if (await session.execute(fenced)).rowcount == 0:
        raise StaleTokenError(f"the order summary holds a newer token than {token}")


async def read(session: AsyncConnection) -> OrderStats | None:
    row = (await session.execute(select(order_stats).where(order_stats.c.name == NAME))).first()
    return OrderStats.model_validate(row._mapping) if row is not None else None


def singletons(example: Example, instance: str) -> list[Singleton]:
    async def summarize(token: int) -> None:
        async with example.database.transaction() as session:
            await write(session, token, instance)

    return [Singleton("order-stats", EVERY, summarize)]
