"""Every transport's dead letters behind one list/show/delete/replay API, used by the admin
endpoints and the `python -m app dlq` command alike.

Ids are opaque strings that begin with their store's prefix (`js-17`, `rd-...`); a page cursor
lists, for each store that has more, the id to resume it from.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Protocol

from pydantic import BaseModel

from app.errors import DeadLetterNotFoundError
from app.messages import H_ID, H_TYPE

# What a dead-letter record says about its message, as headers (JetStream) or fields (Redis)
# next to the original ones; each store adds where in its broker the message was.
D_REASON = "qm-dlq-reason"
D_ERROR = "qm-dlq-error"
D_DELIVERIES = "qm-dlq-deliveries"
D_SUBJECT = "qm-dlq-subject"
D_CONSUMER = "qm-dlq-consumer"
D_AT = "qm-dlq-at"
D_STUB = "qm-dlq-stub"


class DeadLetter(BaseModel):
    """A message that could not be handled, kept for inspection and replay."""

    dlq_id: str
    message_id: str
    type: str
    subject: str
    transport: str
    reason: str
    error: str
    deliveries: int
    dead_at: datetime
    stub: bool = False  # too large to keep whole: the record and the first KiB, not replayable


class DeadLetterDetail(DeadLetter):
    headers: dict[str, str]
    body: str


class DeadLetterPage(BaseModel):
    items: list[DeadLetter]
    total: int
    next_cursor: str | None = None


class DeadLetterStore(Protocol):
    """Where a transport keeps its dead letters; ids are opaque and carry the transport's prefix."""

    prefix: str

    async def list(self, limit: int, cursor: str | None) -> DeadLetterPage:
        """Newest first; `cursor` is the `next_cursor` of the previous page."""
        ...

    async def get(self, dlq_id: str) -> DeadLetterDetail:
        """Raises DeadLetterNotFoundError."""
        ...

    async def delete(self, dlq_id: str) -> None: ...

    async def replay(self, dlq_id: str) -> str:
        """Send the message back through its normal path (same message id); returns that id."""
        ...


def parse_time(value: str | None) -> datetime | None:
    """An ISO 8601 time stored in a header or field, or None when absent or unreadable."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def detail_from(
    dlq_id: str,
    transport: str,
    headers: Mapping[str, str],
    body: bytes,
    stored_at: datetime | None,
) -> DeadLetterDetail:
    """A dead letter as every store reads it back from its record's headers and body."""
    return DeadLetterDetail(
        dlq_id=dlq_id,
        message_id=headers.get(H_ID, ""),
        type=headers.get(H_TYPE, ""),
        subject=headers.get(D_SUBJECT, ""),
        transport=transport,
        reason=headers.get(D_REASON, ""),
        error=headers.get(D_ERROR, ""),
        deliveries=int(headers.get(D_DELIVERIES, "0") or 0),
        dead_at=parse_time(headers.get(D_AT)) or stored_at or datetime.now(UTC),
        stub=headers.get(D_STUB) == "true",
        headers=dict(headers),
        body=body.decode("utf-8", errors="replace"),
    )


class DeadLetters:
    def __init__(self, stores: Sequence[DeadLetterStore]) -> None:
        self._stores = {store.prefix: store for store in stores}

    def _store(self, dlq_id: str) -> DeadLetterStore:
        store = self._stores.get(dlq_id.partition("-")[0])
        if store is None:
            raise DeadLetterNotFoundError(dlq_id)
        return store

    async def list(self, limit: int = 50, cursor: str | None = None) -> DeadLetterPage:
        """Newest first across every store."""
        resume: dict[str, str | None]
        if cursor:
            resume = {part.partition("-")[0]: part for part in cursor.split(",") if part}
        else:
            resume = dict.fromkeys(self._stores)
        pages = {
            prefix: await self._stores[prefix].list(limit, start)
            for prefix, start in resume.items()
            if prefix in self._stores
        }
        merged = sorted(
            (item for page in pages.values() for item in page.items),
            key=lambda item: item.dead_at,
            reverse=True,
        )[:limit]
        taken = {item.dlq_id for item in merged}
        next_parts = []
        for page in pages.values():
            left = [item for item in page.items if item.dlq_id not in taken]
            if left:
                next_parts.append(left[0].dlq_id)
            elif page.next_cursor:
                next_parts.append(page.next_cursor)
        total = sum(page.total for page in pages.values())
        for prefix, store in self._stores.items():
            if prefix not in pages:
                total += (await store.list(0, None)).total
        return DeadLetterPage(items=merged, total=total, next_cursor=",".join(next_parts) or None)

    async def get(self, dlq_id: str) -> DeadLetterDetail:
        return await self._store(dlq_id).get(dlq_id)

    async def delete(self, dlq_id: str) -> None:
        await self._store(dlq_id).delete(dlq_id)

    async def replay(self, dlq_id: str) -> str:
        return await self._store(dlq_id).replay(dlq_id)


__all__ = ["DeadLetter", "DeadLetterDetail", "DeadLetterPage", "DeadLetters"]
