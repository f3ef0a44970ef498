"""`PeerClient`: an `httpx.AsyncClient` on a `DiscoveryTransport`, plus requests to one given
instance for fan-outs such as `GET /cluster/health`."""

from __future__ import annotations

from typing import Any

import httpx

from app.discovery.base import Discovery
from app.discovery.models import NodeInfo
from app.peers.balancing import Balancer, BalancingName, balancer_named
from app.peers.transport import NODE_EXTENSION, CallBudget, DiscoveryTransport

DEFAULT_TIMEOUT = httpx.Timeout(5.0, connect=1.0)


class PeerClient(httpx.AsyncClient):
    """`await peers.get("http://billing/invoices/1")` reaches a live instance of `billing`.

    Everything else is plain httpx: other hosts pass through unchanged, and keyword arguments
    other than the balancing ones go to `httpx.AsyncClient`.
    """

    def __init__(
        self,
        discovery: Discovery,
        *,
        balancing: BalancingName | Balancer = "round_robin",
        budget: CallBudget | None = None,
        cooldown: float = 2.0,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        **client_options: Any,
    ) -> None:
        balancer = (
            balancer_named(balancing, discovery.self_info.node_id)
            if isinstance(balancing, str)
            else balancing
        )
        self.discovery_transport = DiscoveryTransport(
            discovery, balancer=balancer, transport=transport, budget=budget, cooldown=cooldown
        )
        super().__init__(transport=self.discovery_transport, timeout=timeout, **client_options)

    async def node_request(
        self, node: NodeInfo, method: str, path: str, **options: Any
    ) -> httpx.Response:
        """`method path` on exactly this instance, at its advertised address: no balancing and
        no failover (the caller chose the node, so it also wants that node's failure)."""
        extensions = {**options.pop("extensions", {}), NODE_EXTENSION: node.node_id}
        url = node.address.rstrip("/") + path
        return await self.request(method, url, extensions=extensions, **options)
