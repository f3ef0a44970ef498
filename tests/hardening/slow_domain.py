"""A domain with slow handlers for drain tests: `APP_DOMAIN=tests.hardening.slow_domain`.

`POST /jobs {"n": int, "seconds": float}` publishes a `SlowJob` (QoS 1); its handler writes
`start <n> <pid>` and, after sleeping, `done <n> <pid>` to the file named by SLOW_JOBS_LOG.
"""

import asyncio
import os
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel

from app.brokers import Brokers
from app.bus import Bus
from app.instance.services import services_of
from app.messages import Message
from app.settings import Settings

router = APIRouter()


class SlowJob(Message):
    n: int
    seconds: float


class JobRequest(BaseModel):
    n: int
    seconds: float


@router.post("/jobs", status_code=202)
async def submit(job: JobRequest, request: Request) -> dict[str, Any]:
    await services_of(request.app).bus.publish(SlowJob(n=job.n, seconds=job.seconds))
    return {"n": job.n}


@dataclass
class SlowDomain:
    log_path: str


def _write(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


async def setup(bus: Bus, brokers: Brokers, settings: Settings) -> SlowDomain:
    path = os.environ["SLOW_JOBS_LOG"]

    @bus.handler(SlowJob)
    async def run(job: SlowJob) -> None:
        _write(path, f"start {job.n} {os.getpid()}")
        await asyncio.sleep(job.seconds)
        _write(path, f"done {job.n} {os.getpid()}")

    return SlowDomain(path)
