"""HTTP `Idempotency-Key` for a command that writes to the database: the key and the answer are
written in the command's own transaction, so they commit or roll back with its effects.

A repeat of a committed command gets its answer; a repeat of one that rolled back (a 503, a
crash) finds nothing and runs again, as the first try never happened. Two tries at once: the
second waits on the key's row until the first commits (then replays its answer) or rolls back
(then runs). A key reused for a different request is a conflict (409). This is what makes an
indeterminate COMMIT (its reply lost) safe to retry with the same key.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, TypeVar

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert

from app.database.connection import Transaction
from app.database.tables import http_keys

M = TypeVar("M", bound=BaseModel)
PENDING = 0  # the answer is written before the transaction commits; never seen by others


def fingerprint(*parts: Any) -> str:
    """A stable hash of the request (path parameters and body): a key reused for another
    request is told apart from a repeat."""
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


class TransactionalCommand:
    """One command under its Idempotency-Key (None: nothing is remembered), inside `session`'s
    transaction:

        command = await TransactionalCommand.begin(session, "POST /orders", key, fp)
        if command.replay is not None:
            return command.replay
        ...  # the writes, the outbox publish
        return await command.answer(202, accepted)
    """

    __slots__ = ("_key", "_scope", "_session", "replay")

    def __init__(self, session: Transaction, scope: str, key: str | None) -> None:
        self._session, self._scope, self._key = session, scope, key
        self.replay: JSONResponse | None = None

    @classmethod
    async def begin(
        cls, session: Transaction, scope: str, key: str | None, fingerprint: str
    ) -> TransactionalCommand:
        command = cls(session, scope, key)
        if key is None:
            return command
        claimed = await session.execute(
            insert(http_keys)
            .values(scope=scope, key=key, fingerprint=fingerprint, status=PENDING, response={})
            .on_conflict_do_nothing()
            .returning(http_keys.c.key)
        )
        if claimed.first() is not None:
            return command
        earlier = (
            await session.execute(
                select(http_keys.c.fingerprint, http_keys.c.status, http_keys.c.response).where(
                    http_keys.c.scope == scope, http_keys.c.key == key
                )
            )
        ).one()
        if earlier.fingerprint != fingerprint:
            raise HTTPException(409, "Idempotency-Key was already used for a different request")
        command.replay = JSONResponse(earlier.response, status_code=earlier.status)
        return command

    async def answer(self, status: int, body: M) -> M:
        """Write `body` as the answer every repeat gets, in the same transaction; return it."""
        if self._key is not None:
            response: dict[str, Any] = body.model_dump(mode="json")
            await self._session.execute(
                http_keys.update()
                .where(http_keys.c.scope == self._scope, http_keys.c.key == self._key)
                .values(status=status, response=response)
            )
        return body
