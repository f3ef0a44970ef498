"""The outbox's dead rows: messages the broker or the code refused for good, set aside by the
relay with their reason (app/database/outbox.py). An operator lists and reads them, retries one
once its cause is fixed (the relay publishes it again, after the rows of its key that went on
without it), or discards it. Reached through `/admin/outbox` and `python -m app outbox`."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel
from sqlalchemy import delete, func, select, text, update

from app.database.connection import Database
from app.database.tables import outbox
from app.errors import DeadRowNotFoundError
from app.messages import H_TYPE

PAGE_LIMIT = 500


class DeadRow(BaseModel):
    """One dead outbox row, as listed."""

    id: int
    message_id: str
    type: str
    subject: str
    qos: int
    transport: str
    ordering_key: str | None
    attempts: int
    error: str
    bytes: int
    created_at: datetime
    dead_at: datetime


class DeadRowDetail(DeadRow):
    """A dead row with its headers and body (UTF-8, undecodable bytes replaced)."""

    headers: dict[str, str]
    body: str


class DeadRowPage(BaseModel):
    items: list[DeadRow]
    total: int
    next_after: int | None
    """The id to pass as `after` for the next page (None: this was the last)."""


_COLUMNS = (
    outbox.c.id,
    outbox.c.message_id,
    outbox.c.headers,
    outbox.c.subject,
    outbox.c.qos,
    outbox.c.transport,
    outbox.c.ordering_key,
    outbox.c.attempts,
    outbox.c.last_error,
    func.length(outbox.c.body),
    outbox.c.created_at,
    outbox.c.dead_at,
)


def _row(r: Any) -> dict[str, Any]:
    return {
        "id": r[0],
        "message_id": r[1],
        "type": str(r[2].get(H_TYPE, "")) or "(not a qosmesh message)",
        "subject": r[3],
        "qos": r[4],
        "transport": r[5],
        "ordering_key": r[6],
        "attempts": r[7],
        "error": r[8] or "",
        "bytes": r[9],
        "created_at": r[10],
        "dead_at": r[11],
    }


async def page(database: Database, limit: int = 50, after: int | None = None) -> DeadRowPage:
    """Dead rows, oldest first, `limit` at a time after the id `after`."""
    dead = outbox.c.dead_at.isnot(None)
    query = select(*_COLUMNS).where(dead).order_by(outbox.c.id).limit(limit + 1)
    if after is not None:
        query = query.where(outbox.c.id > after)
    async with database.engine.connect() as session:
        rows = (await session.execute(query)).all()
        total = (await session.execute(select(func.count()).where(dead))).scalar_one()
    items = [DeadRow(**_row(r)) for r in rows[:limit]]
    more = len(rows) > limit
    return DeadRowPage(items=items, total=total, next_after=items[-1].id if more else None)


async def show(database: Database, row_id: int) -> DeadRowDetail:
    async with database.engine.connect() as session:
        found = (
            await session.execute(
                select(*_COLUMNS, outbox.c.body).where(
                    outbox.c.id == row_id, outbox.c.dead_at.isnot(None)
                )
            )
        ).first()
    if found is None:
        raise DeadRowNotFoundError(f"no dead outbox row {row_id}")
    headers = {str(k): str(v) for k, v in found[2].items()}
    body = bytes(found[12]).decode("utf-8", errors="replace")
    return DeadRowDetail(**_row(found), headers=headers, body=body)


async def retry(database: Database, row_id: int) -> None:
    """Send the row again: the relay takes it at its next round."""
    async with database.transaction() as session:
        revived = await session.execute(
            update(outbox)
            .where(outbox.c.id == row_id, outbox.c.dead_at.isnot(None))
            .values(dead_at=None, not_before=None)
            .returning(outbox.c.id)
        )
        if revived.first() is None:
            raise DeadRowNotFoundError(f"no dead outbox row {row_id}")
        await session.execute(text("SELECT pg_notify('qosmesh_outbox', '')"))


async def discard(database: Database, row_id: int) -> None:
    """Delete the row: its message is never sent."""
    async with database.transaction() as session:
        gone = await session.execute(
            delete(outbox)
            .where(outbox.c.id == row_id, outbox.c.dead_at.isnot(None))
            .returning(outbox.c.id)
        )
        if gone.first() is None:
            raise DeadRowNotFoundError(f"no dead outbox row {row_id}")
