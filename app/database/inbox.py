"""The transactional inbox: a handler that asks for a session runs in a transaction that also
records its message id, so its database effects are applied once per message id, however often
the message is delivered. A redelivery finds the id and is acked without running; a delivery
racing another of the same message waits on the id's row until the first commits or rolls back.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from app import failpoints
from app.database.connection import Database, Transaction, unavailable
from app.database.tables import inbox
from app.errors import HandlerTimeoutError, StoreUnavailableError
from app.messages import Message

M = TypeVar("M", bound=Message)
SessionHandler = Callable[[M, AsyncConnection], Awaitable[None]]


_RECORD = insert(inbox).on_conflict_do_nothing().returning(inbox.c.message_id)


async def first_time(session: Transaction, consumer: str, message_id: str) -> bool:
    """Record `message_id` as handled by `consumer` in this transaction; False if it already
    was (by a committed transaction)."""
    result = await session.execute(_RECORD, {"consumer": consumer, "message_id": message_id})
    return result.first() is not None


async def handle_once(
    database: Database, consumer: str, message: M, handler: SessionHandler[M]
) -> bool:
    """Run `handler` with a connection in one transaction with the inbox record; False (and
    the handler not run) when the message was already handled."""
    try:
        async with database.engine.begin() as connection:
            if not await first_time(connection, consumer, message.message_id):
                return False
            await handler(message, connection)
        failpoints.reached("inbox.before_ack")
        return True
    except HandlerTimeoutError:
        raise  # the handler's own failure, rolled back: never a database away
    except Exception as exc:
        if unavailable(exc):
            raise StoreUnavailableError(f"database: {type(exc).__name__}") from exc
        raise
