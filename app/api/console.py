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
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel

from app import __version__
from app.api.deps import ServicesDep

ASSETS = Path(__file__).parent / "assets"
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
    return FileResponse(ASSETS / "console.html", headers=page_headers())


@router.get("/api/info")
async def console_info(services: ServicesDep) -> ConsoleInfo:
    settings = services.settings
    return ConsoleInfo(
        service=settings.service_name,
        node_id=services.discovery.self_info.node_id,
        version=__version__,
        admin=settings.admin_token is not None,
    )


@router.get("/api/messaging")
async def messaging(services: ServicesDep) -> Messaging:
    """The consumers of this instance and the QoS counters, read from the same instruments
    as `/metrics`."""
    samples = _samples()
    consumers = []
    for transport, sub in services.bus.consumers:
        pending = [
            v for n, labels, v in samples if n == PENDING and labels.get("consumer") == sub.name
        ]
        consumed = {"name": CONSUMED, "messaging_destination_name": sub.subject}
        consumers.append(
            ConsumerStats(
                consumer=sub.name,
                subject=sub.subject,
                transport=transport,
                qos=int(sub.qos),
                pending=sum(pending) if pending else None,
                handled=_total(samples, **consumed, outcome="ack"),
                duplicates=_total(samples, **consumed, outcome="duplicate"),
                redeliveries=_total(samples, name=REDELIVERIES, destination=sub.subject),
                dead_letters=_total(samples, name=DEAD_LETTERS, destination=sub.subject),
            )
        )
    sides = {labels.get("side", "") for n, labels, _v in samples if n == DEDUPE_HITS}
    return Messaging(
        consumers=consumers,
        qos=QosCounters(
            qos0_lost=_total(samples, name="qosmesh_qos0_lost_total"),
            publish_retries=_total(samples, name="qosmesh_publish_retries_total"),
            redeliveries=_total(samples, name=REDELIVERIES),
            dedupe_hits={side: _total(samples, name=DEDUPE_HITS, side=side) for side in sides},
        ),
    )


PENDING = "qosmesh_consumer_pending"
CONSUMED = "messaging_client_consumed_messages_total"
REDELIVERIES = "qosmesh_redeliveries_total"
DEAD_LETTERS = "qosmesh_dead_letters_total"
DEDUPE_HITS = "qosmesh_dedupe_hits_total"

Sample = tuple[str, dict[str, str], float]


def _samples() -> list[Sample]:
    """Every sample `/metrics` would show now: (name, labels, value)."""
    text = generate_latest().decode()
    return [
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def _total(samples: list[Sample], name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    return sum(
        value
        for sample_name, sample_labels, value in samples
        if sample_name == name and all(sample_labels.get(k) == v for k, v in labels.items())
    )


def page_headers(csp: str = CSP) -> dict[str, str]:
    return {
        "Content-Security-Policy": csp,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
    }
