"""An httpx transport that sends `http://<service>/path` to a live instance of `<service>`, as
the discovery view knows it, and fails over to another instance when that is safe.

Safe means the request cannot have reached the application (the connection was refused or never
opened), or the request is idempotent (GET, HEAD, PUT, DELETE, OPTIONS, TRACE, or any request
carrying an `Idempotency-Key` header) and it timed out or the connection broke mid-exchange.
A POST or PATCH without an Idempotency-Key that may have reached the peer is never sent twice.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

import httpx

from app.discovery.base import Discovery
from app.discovery.models import NodeInfo
from app.errors import NoInstanceError
from app.peers.balancing import Balancer, RoundRobin

log = logging.getLogger(__name__)

NODE_EXTENSION = "qosmesh.node"
"""Request extension: send to this node id's address as is (no balancing, no failover).
Response extension: the node id that answered."""

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})

# A service name as APP_SERVICE_NAME allows it: one DNS label, so "billing" is a service while
# "billing.internal", "127.0.0.1" or "billing:8000" are ordinary hosts.
_SERVICE_HOST = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_ORDINARY_HOSTS = frozenset({"localhost"})

# Nothing reached the peer: retrying elsewhere is always safe, and the node is likely down.
_NOT_CONNECTED = (httpx.ConnectError, httpx.ConnectTimeout)
# The peer may have received the request: only idempotent requests go elsewhere.
_MAYBE_RECEIVED = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)


@dataclass(frozen=True, slots=True)
class CallBudget:
    """At most `attempts` instances per call, and no new attempt after `seconds` from the
    first one (an attempt in flight still runs to the client's own timeout)."""

    attempts: int = 3
    seconds: float = 10.0


def service_of(url: httpx.URL) -> str | None:
    """The service a URL names, or None for an ordinary host (a dot, a port, or localhost)."""
    host = url.host
    if url.port is not None or host in _ORDINARY_HOSTS or not _SERVICE_HOST.match(host):
        return None
    return host


def is_idempotent(request: httpx.Request) -> bool:
    return request.method in IDEMPOTENT_METHODS or "idempotency-key" in request.headers


class DiscoveryTransport(httpx.AsyncBaseTransport):
    """Resolves service names through `discovery`, then hands the request to `transport` (an
    `httpx.AsyncHTTPTransport` by default, which the OpenTelemetry httpx instrumentation
    traces: one client span per attempt, with the instance's real URL)."""

    def __init__(
        self,
        discovery: Discovery,
        *,
        balancer: Balancer | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        budget: CallBudget | None = None,
        cooldown: float = 2.0,
    ) -> None:
        self._discovery = discovery
        self._balancer = balancer or RoundRobin()
        self._inner = transport or httpx.AsyncHTTPTransport()
        self._budget = budget or CallBudget()
        self._cooldown = cooldown
        self._cooling: dict[str, float] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        pinned = request.extensions.get(NODE_EXTENSION)
        service = service_of(request.url)
        if pinned is not None or service is None:
            return await self._inner.handle_async_request(request)
        candidates = self.candidates(service)
        body = await request.aread()
        retry_maybe_received = is_idempotent(request)
        give_up_at = time.monotonic() + self._budget.seconds
        error: httpx.TransportError | None = None
        tried = 0
        for node in candidates:
            if tried == self._budget.attempts or (tried and time.monotonic() > give_up_at):
                break
            if self._discovery.get(node.node_id) is None:
                continue  # left the view since this call started
            tried += 1
            try:
                response = await self._inner.handle_async_request(_to_node(request, node, body))
            except _NOT_CONNECTED as exc:
                self._cool_down(node)
                error = exc
            except _MAYBE_RECEIVED as exc:
                if not retry_maybe_received:
                    raise
                error = exc
            else:
                response.extensions[NODE_EXTENSION] = node.node_id
                return response
            log.info(
                "peer call %s %s to %s (%s) failed: %r",
                request.method,
                request.url,
                node.node_id,
                node.address,
                error,
            )
        if error is None:
            raise NoInstanceError(service)
        raise error

    def candidates(self, service: str) -> list[NodeInfo]:
        """The live, non-draining instances of `service` in the order this call tries them:
        the balancer's order, instances cooling down after a connection error last."""
        nodes = [node for node in self._discovery.nodes(service) if not is_draining(node)]
        if not nodes:
            raise NoInstanceError(service)
        now = time.monotonic()
        live = {node.node_id for node in nodes}
        self._cooling = {
            node_id: until
            for node_id, until in self._cooling.items()
            if until > now and node_id in live
        }
        ready = [node for node in nodes if node.node_id not in self._cooling]
        cooling = [node for node in nodes if node.node_id in self._cooling]
        return self._balancer.order(service, ready) + _by_expiry(cooling, self._cooling)

    def _cool_down(self, node: NodeInfo) -> None:
        self._cooling[node.node_id] = time.monotonic() + self._cooldown

    async def aclose(self) -> None:
        await self._inner.aclose()


def is_draining(node: NodeInfo) -> bool:
    return node.metadata.get("draining") == "true"


def _by_expiry(nodes: Sequence[NodeInfo], cooling: dict[str, float]) -> list[NodeInfo]:
    return sorted(nodes, key=lambda node: cooling[node.node_id])


def _to_node(request: httpx.Request, node: NodeInfo, body: bytes) -> httpx.Request:
    """A copy of `request` aimed at `node`'s address (its path prefix kept), Host included."""
    base = httpx.URL(node.address)
    url = base.copy_with(raw_path=base.raw_path.rstrip(b"/") + request.url.raw_path)
    headers = request.headers.copy()
    headers["host"] = url.netloc.decode("ascii")
    return httpx.Request(
        request.method, url, headers=headers, content=body, extensions=request.extensions
    )
