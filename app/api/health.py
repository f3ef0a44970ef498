"""Liveness and readiness probes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.api.deps import ServicesDep

ReadinessCheck = Callable[[], Awaitable[dict[str, str]]]

router = APIRouter(tags=["health"])


class Readiness:
    """Named checks; the instance is ready only while every one of them answers "ok"."""

    def __init__(self) -> None:
        self._checks: list[ReadinessCheck] = []
        self.draining = False

    def add(self, check: ReadinessCheck) -> None:
        self._checks.append(check)

    async def evaluate(self) -> dict[str, str]:
        results: dict[str, str] = {}
        for check in self._checks:
            results.update(await check())
        if self.draining:
            results["lifecycle"] = "draining"
        return results


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
    """Readiness: every broker, and every component, is usable right now."""
    readiness = services.readiness
    checks = await readiness.evaluate() if readiness else {"startup": "pending"}
    ready = bool(checks) and all(value == "ok" for value in checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "not_ready", "checks": checks},
        status_code=200 if ready else 503,
    )
