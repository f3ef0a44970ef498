"""Every transport's dead letters behind one list/show/delete/replay API, used by the admin
endpoints and the `python -m app dlq` command alike.

Ids are opaque strings that begin with their store's prefix (`js-17`, `rd-...`); a page cursor
lists, for each store that has more, the id to resume it from.
"""

from __future__ import annotations

from collections.abc import Sequence

from app.errors import DeadLetterNotFoundError
from app.transports.base import DeadLetter, DeadLetterDetail, DeadLetterPage, DeadLetterStore


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
