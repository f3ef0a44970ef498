"""`/console`: an operations page for people. Nodes (live, from `/nodes/events`), messaging per
consumer for this instance or the whole service (app/api/messaging.py) with charts, dead
letters by failure (with the admin token) and cluster health; static assets packaged with the
service, no CDN and no build step (docs/console.md).

Every page is served with a Content-Security-Policy that allows scripts, styles and requests
from this origin only; the script builds the page with text nodes, never HTML, so what nodes
and messages carry is shown as text.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse
from pydantic import BaseModel

from app import __version__
from app.api.deps import ServicesDep
from app.api.messaging import Messaging, Numbers, Scope, numbers, view
from app.observability.history import HISTORY
from app.observability.snapshot import latest

if TYPE_CHECKING:
    from app.discovery import NodeInfo
    from app.instance.services import Services
    from app.peers import PeerClient

log = logging.getLogger(__name__)

ASK_TIMEOUT = 2.0
"""Seconds to wait for each instance's numbers in the service's view."""

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
async def messaging(
    services: ServicesDep,
    scope: Annotated[
        Scope, Query(description="this instance's numbers, or the whole service's")
    ] = "instance",
) -> Messaging:
    """The consumers, the QoS counters, latency percentiles and the last minutes as charts,
    read from the same instruments as `/metrics` (at most a second ago). `scope=service`
    asks every instance of the service for its numbers and adds them up
    (app/api/messaging.py)."""
    if scope == "instance":
        answer = view("instance", [_numbers(services)])
    else:
        answer = await _SERVICE.get(lambda: _service_view(services))
    answer.age = round(time.monotonic() - latest().taken, 3)
    return answer


@router.get("/api/numbers")
async def instance_numbers(services: ServicesDep) -> Numbers:
    """This instance's numbers, samples included, as the service's view adds them up."""
    return _numbers(services)


def _numbers(services: Services) -> Numbers:
    consumers = [
        (sub.name, sub.subject, transport, int(sub.qos), sub.group is not None)
        for transport, sub in services.bus.consumers
    ]
    node_id = services.discovery.self_info.node_id
    return numbers(node_id, consumers, latest(), HISTORY.samples())


async def _service_view(services: Services) -> Messaging:
    me = services.discovery.self_info
    others = [node for node in services.discovery.nodes(me.service) if node.node_id != me.node_id]
    answers = await asyncio.gather(*(_ask(services.peers, node) for node in others))
    reports = [_numbers(services), *(a for a in answers if a is not None)]
    missing = [node.node_id for node, a in zip(others, answers, strict=True) if a is None]
    return view("service", reports, missing)


async def _ask(peers: PeerClient, node: NodeInfo) -> Numbers | None:
    try:
        response = await peers.node_request(
            node, "GET", "/console/api/numbers", timeout=ASK_TIMEOUT
        )
        response.raise_for_status()
        return Numbers.model_validate_json(response.content)
    except Exception as exc:  # counted as missing, and the page names it
        log.info("numbers of %s not read: %s", node.node_id, exc)
        return None


class _Cached:
    """One value, computed again once it is `max_age` seconds old; callers arriving while it
    is being computed wait for that computation (one fan-out to the peers at a time)."""

    def __init__(self, max_age: float) -> None:
        self._max_age = max_age
        self._value: Messaging | None = None
        self._at = -math.inf
        self._lock = asyncio.Lock()

    async def get(self, compute: Callable[[], Awaitable[Messaging]]) -> Messaging:
        async with self._lock:
            if self._value is None or time.monotonic() - self._at >= self._max_age:
                self._value, self._at = await compute(), time.monotonic()
            return self._value.model_copy()


_SERVICE = _Cached(max_age=1.0)


def page_headers(csp: str = CSP) -> dict[str, str]:
    return {
        "Content-Security-Policy": csp,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
    }
