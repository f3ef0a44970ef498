"""Every transport's dead letters behind one list/show/delete/replay API, used by the admin
endpoints and the `python -m app dlq` command alike.

Ids are opaque strings that begin with their store's prefix (`js-17`, `rd-...`); a page cursor
lists, for each store that has more, the id to resume it from. Each dead letter is named by its
`label` (its message type, or the subject a message with none came on) and says why it is one in
a sentence, its `explanation`: a message that is not a qosmesh message at all still reads.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, Protocol

from pydantic import BaseModel, computed_field

from app.errors import DeadLetterNotFoundError
from app.messages import H_ID, H_TYPE, NO_TYPE, NO_VERSION, DeadLetterReason, NewerSchemaError

# What a dead-letter record says about its message, as headers (JetStream) or fields (Redis)
# next to the original ones; each store adds where in its broker the message was.
D_REASON = "qm-dlq-reason"
D_ERROR = "qm-dlq-error"
D_DELIVERIES = "qm-dlq-deliveries"
D_SUBJECT = "qm-dlq-subject"
D_CONSUMER = "qm-dlq-consumer"
D_AT = "qm-dlq-at"
D_STUB = "qm-dlq-stub"
D_ERROR_TYPE = "qm-dlq-error-type"

SCAN_PAGE = 500
SCAN_LIMIT = 10_000
"""Grouping reads at most this many dead letters, the newest; a bulk action finds its group's
members among them."""
SCAN_BUDGET = 5.0
"""Seconds grouping may read for; what it read by then is grouped and marked incomplete. Each
page of SCAN_PAGE costs a few batched reads (app/brokers/direct_get.py), so the full scan is
about 20 pages: tens of requests, whatever holes discards left."""
BULK_LIMIT = 1000
UNKNOWN = "unknown"
"""The error type of records kept before they had one."""
NO_SUBJECT = "(no subject)"
"""The label of a dead letter with neither a message type nor a subject."""


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a message is dead-lettered: the reason, the error, and the error's type (the
    exception's class name), by which failures are grouped."""

    reason: str
    error: str
    error_type: str = UNKNOWN

    def record(self) -> dict[str, str]:
        """The headers (JetStream) or fields (Redis) a dead-letter record keeps of it."""
        return {
            D_REASON: self.reason,
            D_ERROR: " ".join(self.error.split())[:1000],
            D_ERROR_TYPE: self.error_type or UNKNOWN,
        }


NO_RESULT = Failure(
    DeadLetterReason.MAX_DELIVERIES,
    "delivery limit reached with no handler result (consumer died or timed out)",
    "NoHandlerResult",
)
"""A message given up on with no handler having ended on any of its deliveries."""


class DeadLetter(BaseModel):
    """A message that could not be handled, kept for inspection and replay."""

    dlq_id: str
    message_id: str
    type: str
    subject: str
    transport: str
    reason: str
    error: str
    error_type: str = UNKNOWN
    deliveries: int
    dead_at: datetime
    stub: bool = False  # too large to keep whole: the record and the first KiB, not replayable

    @computed_field  # type: ignore[prop-decorator]
    @property
    def label(self) -> str:
        """What to call it: its message type, else the subject it came on, else NO_SUBJECT."""
        return label_of(self.type, self.subject)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def explanation(self) -> str:
        """Why it is a dead letter, as one sentence for a person."""
        return explain(self.reason, self.error, self.error_type, self.deliveries)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def fingerprint(self) -> str:
        """Its failure group (label + reason + error type), as /admin/dlq/groups."""
        return failure_fingerprint(self)


class DeadLetterDetail(DeadLetter):
    headers: dict[str, str]
    body: str


class DeadLetterGroup(BaseModel):
    """Dead letters that failed the same way: same label, reason and error type."""

    fingerprint: str
    label: str  # its members'
    type: str  # its members' message type; empty when they have none
    reason: str
    error_type: str
    count: int
    first_dead_at: datetime
    last_dead_at: datetime
    example_error: str  # the newest one's
    explanation: str  # the newest one's


class DeadLetterGroups(BaseModel):
    groups: list[DeadLetterGroup]  # the largest first
    scanned: int
    complete: bool  # False: more than the scan limit are stored, the counts are of the newest


class BulkResult(BaseModel):
    """What a bulk replay or discard of one group did, one dead letter at a time."""

    fingerprint: str
    matched: int  # members found, at most the limit
    done: int
    errors: dict[str, str]  # dlq_id -> why it was not done


class Replayed(BaseModel):
    """A dead letter sent back: its message is on its way again under `message_id`."""

    dlq_id: str
    message_id: str  # empty for a message that had none
    label: str
    status: Literal["replayed"] = "replayed"


def failure_fingerprint(item: DeadLetter) -> str:
    """A failure's group: label + reason + error type, as a short URL-safe id. The label is
    the message type when there is one, so a typed group keeps the id it had before labels;
    messages with no type group by the subject they came on."""
    key = "\x00".join((item.label, item.reason, item.error_type))
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def label_of(message_type: str, subject: str) -> str:
    return message_type or subject or NO_SUBJECT


def naming(message_id: str, subject: str) -> str:
    """A message as a log line names it: by its id, or by where it came from without one."""
    if message_id:
        return f"message {message_id}"
    return f"a message on {subject or NO_SUBJECT} (no message id)"


_BYTES = re.compile(r"(\d+) bytes")
_OLD_NO_VERSION = "envelope version None"
_OLD_NO_TYPE = "no handler for type ''"
"""What a missing envelope version or type read as before NO_VERSION and NO_TYPE, in records
kept then."""


def explain(reason: str, error: str, error_type: str, deliveries: int) -> str:
    """Why a message is a dead letter, in one sentence, from what its record keeps."""
    if reason == DeadLetterReason.MAX_DELIVERIES:
        if error_type == NO_RESULT.error_type:
            times = "once" if deliveries == 1 else f"{deliveries} times"
            return f"delivered {times} and no handler ended on it (a consumer died or timed out)"
        plural = "y" if deliveries == 1 else "ies"
        return f"the handler failed on its last delivery ({deliveries} deliver{plural}): {error}"
    if reason == DeadLetterReason.TERMINATED:
        return "terminated by a consumer"
    if reason == DeadLetterReason.OVERSIZED:
        size = _BYTES.search(error)
        return f"too large: {size.group(1)} bytes" if size else f"too large: {error}"
    return _unreadable(reason, error, error_type) or error or "no reason recorded"


def _unreadable(reason: str, error: str, error_type: str) -> str | None:
    """Why a message that could not be read is not one, or None for another reason."""
    if error.startswith((NO_VERSION, _OLD_NO_VERSION)):
        return "not a qosmesh message: no envelope version header"
    if error.startswith(NO_TYPE) or error == _OLD_NO_TYPE:
        return "not a qosmesh message: no message type header"
    if reason == DeadLetterReason.UNKNOWN_VERSION:
        if error_type == NewerSchemaError.__name__:
            return f"a newer schema version than this service reads ({error})"
        return f"a version this service does not read ({error})"
    if reason == DeadLetterReason.UNKNOWN_TYPE:
        return f"an unknown message type ({error})"
    if reason == DeadLetterReason.UNDECODABLE:
        if "Invalid JSON" in error:  # pydantic's json_invalid
            return "not a qosmesh message: the body is not JSON"
        return f"a body its message type does not accept ({error})"
    return None


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
        error_type=headers.get(D_ERROR_TYPE) or UNKNOWN,
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

    async def scan(
        self, limit: int, budget: float = SCAN_BUDGET
    ) -> tuple[Sequence[DeadLetter], bool]:
        """Up to `limit` dead letters, newest first, read for at most `budget` seconds, and
        whether that was all of them."""
        items: list[DeadLetter] = []
        cursor: str | None = None
        deadline = time.monotonic() + budget
        while len(items) < limit and time.monotonic() < deadline:
            page = await self.list(min(SCAN_PAGE, limit - len(items)), cursor)
            items.extend(page.items)
            cursor = page.next_cursor
            if cursor is None:
                return items, True
        return items, False

    async def groups(self, scan_limit: int = SCAN_LIMIT) -> DeadLetterGroups:
        """The dead letters grouped by failure fingerprint, the largest group first."""
        items, complete = await self.scan(scan_limit)
        groups: dict[str, DeadLetterGroup] = {}
        for item in items:  # newest first
            key = failure_fingerprint(item)
            group = groups.get(key)
            if group is None:
                groups[key] = DeadLetterGroup(
                    fingerprint=key,
                    label=item.label,
                    type=item.type,
                    reason=item.reason,
                    error_type=item.error_type,
                    count=1,
                    first_dead_at=item.dead_at,
                    last_dead_at=item.dead_at,
                    example_error=item.error,
                    explanation=item.explanation,
                )
            else:
                group.count += 1
                group.first_dead_at = min(group.first_dead_at, item.dead_at)
        ordered = sorted(groups.values(), key=lambda g: (-g.count, g.label, g.reason))
        return DeadLetterGroups(groups=ordered, scanned=len(items), complete=complete)

    async def of_message(self, message_id: str, limit: int) -> Sequence[DeadLetter]:
        """Up to `limit` dead letters of message `message_id`, newest first (among the newest
        SCAN_LIMIT): a replayed message that failed again is there under a new id."""
        items, _complete = await self.scan(SCAN_LIMIT)
        return [item for item in items if item.message_id == message_id][:limit]

    async def members(self, key: str, limit: int = BULK_LIMIT) -> Sequence[DeadLetter]:
        """Up to `limit` dead letters of group `key`, oldest first (among the newest
        SCAN_LIMIT)."""
        items, _complete = await self.scan(SCAN_LIMIT)
        return [item for item in reversed(items) if item.fingerprint == key][:limit]

    async def bulk(
        self, key: str, action: Callable[[str], Awaitable[object]], limit: int
    ) -> BulkResult:
        """`action(dlq_id)` on each of up to `limit` members of group `key`, oldest first; a
        member that fails is reported and the rest go on."""
        members = [item.dlq_id for item in await self.members(key, limit)]
        errors: dict[str, str] = {}
        for dlq_id in members:
            try:
                await action(dlq_id)
            except Exception as exc:  # reported with the rest, which go on
                errors[dlq_id] = f"{type(exc).__name__}: {exc}"
        done = len(members) - len(errors)
        return BulkResult(fingerprint=key, matched=len(members), done=done, errors=errors)


__all__ = [
    "BulkResult",
    "DeadLetter",
    "DeadLetterDetail",
    "DeadLetterGroup",
    "DeadLetterGroups",
    "DeadLetterPage",
    "DeadLetters",
]
