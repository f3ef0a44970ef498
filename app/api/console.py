"""`/console`: an operations page for people. Nodes (live, from `/nodes/events`), messaging per
consumer, dead letters by failure (with the admin token) and cluster health; static assets
packaged with the service, no CDN and no build step (docs/console.md).

Every page is served with a Content-Security-Policy that allows scripts, styles and requests
from this origin only; the script builds the page with text nodes, never HTML, so what nodes
and messages carry is shown as text.
"""

from __future__ import annotations

import time
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from pydantic import BaseModel

from app import __version__
from app.api.deps import ServicesDep
from app.observability.snapshot import latest

ASSETS = Path(__file__).parent / "assets"
"""Scripts, styles and images, served as they are under /console/static."""
PAGES = Path(__file__).parent / "pages"
"""HTML, served only by routes that add the policy (never from the static mount)."""
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; font-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
"""The policy of every page qosmesh serves to a browser (ReDoc adds a nonce for its styles)."""

router = APIRouter(prefix="/console", include_in_schema=False)


class ConsoleInfo(BaseModel):
    service: str
    node_id: str
    version: str
    admin: bool  # whether APP_ADMIN_TOKEN is set: the dead-letter tab needs it
    outbox: bool = False  # whether the service keeps a database, and so outbox rows


class ConsumerStats(BaseModel):
    consumer: str
    subject: str
    transport: str
    qos: int
    pending: float | None  # None: the transport reports no backlog for it
    handled: float  # acked after the handler; the page turns it into a rate
    duplicates: float
    redeliveries: float
    dead_letters: float


class QosCounters(BaseModel):
    qos0_lost: float
    publish_retries: float
    redeliveries: float
    dedupe_hits: dict[str, float]


class Messaging(BaseModel):
    consumers: list[ConsumerStats]
    qos: QosCounters
    age: float = 0.0  # seconds since the numbers were read (at most a second): for rates


@router.get("")
async def console_page() -> FileResponse:
    return FileResponse(PAGES / "console.html", headers=page_headers())


@router.get("/api/info")
async def console_info(services: ServicesDep) -> ConsoleInfo:
    settings = services.settings
    return ConsoleInfo(
        service=settings.service_name,
        node_id=services.discovery.self_info.node_id,
        version=__version__,
        admin=settings.admin_token is not None,
        outbox=services.database is not None,
    )


@router.get("/api/messaging")
async def messaging(services: ServicesDep) -> Messaging:
    """The consumers of this instance and the QoS counters, read from the same instruments
    as `/metrics`, as they were at most a second ago (app/observability/snapshot.py)."""
    snapshot = latest()
    consumers = [
        ConsumerStats(
            consumer=sub.name,
            subject=sub.subject,
            transport=transport,
            qos=int(sub.qos),
            pending=snapshot.pending.get(sub.name),
            handled=snapshot.handled(sub.subject, "ack"),
            duplicates=snapshot.handled(sub.subject, "duplicate"),
            redeliveries=snapshot.redeliveries.get(sub.subject, 0),
            dead_letters=snapshot.dead_letters.get(sub.subject, 0),
        )
        for transport, sub in services.bus.consumers
    ]
    return Messaging(
        age=round(time.monotonic() - snapshot.taken, 3),
        consumers=consumers,
        qos=QosCounters(
            qos0_lost=snapshot.qos0_lost,
            publish_retries=snapshot.publish_retries,
            redeliveries=sum(snapshot.redeliveries.values()),
            dedupe_hits={side: float(hits) for side, hits in snapshot.dedupe_hits.items()},
        ),
    )


def page_headers(csp: str = CSP) -> dict[str, str]:
    return {
        "Content-Security-Policy": csp,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
    }
