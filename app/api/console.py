"""`/console`: an operations page for people. Nodes (live, from `/nodes/events`), messaging per
consumer, dead letters by failure (with the admin token) and cluster health; static assets
packaged with the service, no CDN and no build step (docs/console.md).

Every page is served with a Content-Security-Policy that allows scripts, styles and requests
from this origin only; the script builds the page with text nodes, never HTML, so what nodes
and messages carry is shown as text.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from pydantic import BaseModel

from app import __version__
from app.api.deps import ServicesDep
from app.observability.scrape import (
    CONSUMED,
    DEAD_LETTERS,
    DEDUPE_HITS,
    PENDING,
    PUBLISH_RETRIES,
    QOS0_LOST,
    REDELIVERIES,
    samples,
    total,
)

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
    as `/metrics`."""
    found = samples()
    consumers = []
    for transport, sub in services.bus.consumers:
        pending = [
            v for n, labels, v in found if n == PENDING and labels.get("consumer") == sub.name
        ]
        consumed = {"name": CONSUMED, "messaging_destination_name": sub.subject}
        consumers.append(
            ConsumerStats(
                consumer=sub.name,
                subject=sub.subject,
                transport=transport,
                qos=int(sub.qos),
                pending=sum(pending) if pending else None,
                handled=total(found, **consumed, outcome="ack"),
                duplicates=total(found, **consumed, outcome="duplicate"),
                redeliveries=total(found, name=REDELIVERIES, destination=sub.subject),
                dead_letters=total(found, name=DEAD_LETTERS, destination=sub.subject),
            )
        )
    sides = {labels.get("side", "") for n, labels, _v in found if n == DEDUPE_HITS}
    return Messaging(
        consumers=consumers,
        qos=QosCounters(
            qos0_lost=total(found, name=QOS0_LOST),
            publish_retries=total(found, name=PUBLISH_RETRIES),
            redeliveries=total(found, name=REDELIVERIES),
            dedupe_hits={side: total(found, name=DEDUPE_HITS, side=side) for side in sides},
        ),
    )


def page_headers(csp: str = CSP) -> dict[str, str]:
    return {
        "Content-Security-Policy": csp,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
    }
