"""`GET /cluster/health`: every live instance of this service asked for its readiness at once,
through the peer client, so one call shows which instances answer and how fast."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated

import httpx
from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from app.api.deps import DiscoveryDep, PeersDep
from app.discovery import NodeInfo
from app.peers import PeerClient

router = APIRouter(prefix="/cluster", tags=["cluster"])

DEFAULT_TIMEOUT = 2.0


class InstanceHealth(BaseModel):
    node_id: str
    address: str
    ready: bool = Field(description="its /readyz answered 200")
    rtt_ms: float | None = Field(description="round trip of its /readyz; null without answer")
    error: str | None = Field(description="why it is not ready; null when it is")


class ClusterHealth(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    self_id: str = Field(alias="self", description="node_id of the instance that answered")
    instances: list[InstanceHealth]


@router.get("/health", response_model=ClusterHealth)
async def cluster_health(
    discovery: DiscoveryDep,
    peers: PeersDep,
    timeout: Annotated[
        float, Query(gt=0, le=30, description="seconds to wait for each instance")
    ] = DEFAULT_TIMEOUT,
) -> ClusterHealth:
    """Readiness of every live instance of this service, this one included, asked
    concurrently; an instance that does not answer within `timeout` is marked with why."""
    me = discovery.self_info
    instances = await asyncio.gather(
        *(_probe(peers, node, timeout) for node in discovery.nodes(me.service))
    )
    return ClusterHealth.model_validate({"self": me.node_id, "instances": instances})


async def _probe(peers: PeerClient, node: NodeInfo, timeout: float) -> InstanceHealth:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            response = await peers.node_request(node, "GET", "/readyz", timeout=timeout)
    except (TimeoutError, httpx.TimeoutException):
        return _unanswered(node, f"no answer within {timeout:g}s")
    except httpx.HTTPError as exc:
        return _unanswered(node, f"{type(exc).__name__}: {exc}".rstrip(": "))
    rtt_ms = round((time.perf_counter() - started) * 1000, 2)
    ready = response.status_code == 200
    return InstanceHealth(
        node_id=node.node_id,
        address=node.address,
        ready=ready,
        rtt_ms=rtt_ms,
        error=None if ready else _not_ready(response),
    )


def _unanswered(node: NodeInfo, error: str) -> InstanceHealth:
    return InstanceHealth(
        node_id=node.node_id, address=node.address, ready=False, rtt_ms=None, error=error
    )


def _not_ready(response: httpx.Response) -> str:
    """`HTTP 503: discovery=not_registered, lifecycle=draining` from a /readyz answer."""
    try:
        checks = response.json().get("checks", {})
        failing = ", ".join(f"{k}={v}" for k, v in checks.items() if v != "ok")
    except (ValueError, AttributeError):
        failing = ""
    return f"HTTP {response.status_code}" + (f": {failing}" if failing else "")
