"""`/admin/outbox`: the outbox's dead rows, behind the same token as the rest of /admin. A
service without a database answers 404 here."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response

from app.api.admin import require_admin
from app.database import dead_rows
from app.database.connection import Database
from app.instance.services import services_of

router = APIRouter(prefix="/admin/outbox", tags=["admin"], dependencies=[Depends(require_admin)])


async def get_database(request: Request) -> Database:
    database = services_of(request.app).database
    if database is None:
        raise HTTPException(404, "this service keeps no database, so no outbox")
    return database


DatabaseDep = Annotated[Database, Depends(get_database)]
BIGINT = 2**63 - 1  # the rows' ids are PostgreSQL bigints
RowId = Annotated[int, Path(ge=1, le=BIGINT)]


@router.get("/dead")
async def list_dead_rows(
    database: DatabaseDep,
    limit: Annotated[int, Query(ge=1, le=dead_rows.PAGE_LIMIT)] = 50,
    after: Annotated[int | None, Query(ge=0, le=BIGINT)] = None,
) -> dead_rows.DeadRowPage:
    """Outbox rows set aside as dead, oldest first; pass `next_after` back as `after`."""
    return await dead_rows.page(database, limit, after)


@router.get("/dead/{row_id}")
async def show_dead_row(row_id: RowId, database: DatabaseDep) -> dead_rows.DeadRowDetail:
    return await dead_rows.show(database, row_id)


@router.post("/dead/{row_id}/retry", status_code=202)
async def retry_dead_row(row_id: RowId, database: DatabaseDep) -> dict[str, str | int]:
    """Hand the row back to the relay (once its cause is fixed): it is published at its next
    round, after the rows of its key that went on without it."""
    await dead_rows.retry(database, row_id)
    return {"id": row_id, "status": "retrying"}


@router.delete("/dead/{row_id}", status_code=204)
async def discard_dead_row(row_id: RowId, database: DatabaseDep) -> Response:
    """Delete the row: its message is never sent."""
    await dead_rows.discard(database, row_id)
    return Response(status_code=204)
