"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.api.deps import ServicesDep

router = APIRouter(tags=["health"])


@router.get("/healthz", responses={503: {"description": "a supervised task died for good"}})
async def healthz(services: ServicesDep) -> JSONResponse:
    """Liveness: the process serves HTTP, and no supervised task has been dead for longer than
    the grace period without being started again. An unreachable broker does not fail it: a
    restart would not bring the broker back, and the instance reconnects by itself."""
    supervision = services.supervision
    dead = supervision.dead_for_long() if supervision is not None else []
    if dead:
        return JSONResponse({"status": "failed", "dead_tasks": dead}, status_code=503)
    return JSONResponse({"status": "ok"})


@router.get("/readyz", responses={503: {"description": "a check failed"}})
async def readyz(services: ServicesDep) -> JSONResponse:
    """Readiness: every broker, and every component, is usable right now. With a database, the
    brokers are reported but do not count: commands wait in the outbox while they are away,
    and the database (and the outbox's backlog) decides."""
    readiness = services.readiness
    checks, ready = await readiness.evaluate() if readiness else ({"startup": "pending"}, False)
    return JSONResponse(
        {"status": "ready" if ready else "not_ready", "checks": checks},
        status_code=200 if ready else 503,
    )
