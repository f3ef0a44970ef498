"""`/admin`: dead letters, behind `Authorization: Bearer <APP_ADMIN_TOKEN>`.

With no token configured every /admin endpoint answers 404: never open.
"""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response

from app.api.deps import DeadLettersDep, SettingsDep
from app.messages import MAX_ID
from app.qos.dead_letters import (
    BULK_LIMIT,
    BulkResult,
    DeadLetterDetail,
    DeadLetterGroups,
    DeadLetterPage,
    Replayed,
)


async def require_admin(request: Request, settings: SettingsDep) -> None:
    token = settings.admin_token
    if token is None:
        raise HTTPException(404, "Not Found")
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    expected = token.get_secret_value().encode()
    if scheme.lower() != "bearer" or not secrets.compare_digest(given.encode(), expected):
        raise HTTPException(401, "Unauthorized", headers={"WWW-Authenticate": "Bearer"})


Fingerprint = Annotated[str, Path(pattern=r"^[0-9a-f]{16}$")]
BulkLimit = Annotated[int, Query(ge=1, le=BULK_LIMIT)]

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)])
Store = DeadLettersDep


@router.get("/dlq")
async def list_dead_letters(
    store: Store,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=1000)] = None,
    message_id: Annotated[str | None, Query(min_length=1, max_length=MAX_ID)] = None,
) -> DeadLetterPage:
    """Dead letters, newest first; pass `next_cursor` back as `cursor` for the next page.
    With `message_id`, that message's dead letters over the newest 10,000, in one page (a
    `cursor` is not used): a replayed message that failed again is there under a new dlq id."""
    if message_id is None:
        return await store.list(limit, cursor)
    # One page, whatever `cursor` says: there is no next one to ask for.
    items = await store.of_message(message_id, limit)
    return DeadLetterPage(items=list(items), total=len(items))


@router.get("/dlq/groups")
async def dead_letter_groups(store: Store) -> DeadLetterGroups:
    """Dead letters grouped by failure (label + reason + error type), largest first, over
    the newest 10,000. The label is the message type, or the subject of a message with none."""
    return await store.groups()


@router.get("/dlq/groups/{fingerprint}")
async def dead_letter_group(
    fingerprint: Fingerprint, store: Store, limit: BulkLimit = BULK_LIMIT
) -> DeadLetterPage:
    """Up to `limit` dead letters of one group, oldest first."""
    items = await store.members(fingerprint, limit)
    return DeadLetterPage(items=list(items), total=len(items))


@router.post("/dlq/groups/{fingerprint}/replay")
async def replay_group(
    fingerprint: Fingerprint, store: Store, limit: BulkLimit = 1000
) -> BulkResult:
    """Replay up to `limit` dead letters of one group, oldest first, each with its message id."""
    return await store.bulk(fingerprint, store.replay, limit)


@router.post("/dlq/groups/{fingerprint}/discard")
async def discard_group(
    fingerprint: Fingerprint, store: Store, limit: BulkLimit = 1000
) -> BulkResult:
    """Delete up to `limit` dead letters of one group, oldest first."""
    return await store.bulk(fingerprint, store.delete, limit)


@router.get("/dlq/{dlq_id}")
async def show_dead_letter(dlq_id: str, store: Store) -> DeadLetterDetail:
    return await store.get(dlq_id)


@router.delete("/dlq/{dlq_id}", status_code=204)
async def delete_dead_letter(dlq_id: str, store: Store) -> Response:
    await store.delete(dlq_id)
    return Response(status_code=204)


@router.post("/dlq/{dlq_id}/replay", status_code=202)
async def replay_dead_letter(dlq_id: str, store: Store) -> Replayed:
    """Send the message back through its normal path, with its original message id; if it
    fails again, `GET /admin/dlq?message_id=` finds it under a new dlq id."""
    label = (await store.get(dlq_id)).label
    message_id = await store.replay(dlq_id)
    return Replayed(dlq_id=dlq_id, message_id=message_id, label=label)
