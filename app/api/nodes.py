"""Membership over HTTP: the live nodes, one node, and a Server-Sent Events stream of changes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, ConfigDict, Field
from sse_starlette import EventSourceResponse, ServerSentEvent

from app.api.deps import DiscoveryDep
from app.discovery import NodeInfo

router = APIRouter(prefix="/nodes", tags=["nodes"])

KEEP_ALIVE_SECONDS = 15
HEARTBEATS_EVERY = 1.0
"""Seconds between two `heartbeats` events: the last heartbeat of every live node."""


class NodeList(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    self_id: str = Field(alias="self", description="node_id of the instance that answered")
    nodes: list[NodeInfo]


@router.get("", response_model=NodeList)
async def list_nodes(
    discovery: DiscoveryDep,
    service: Annotated[str | None, Query(description="only nodes of this service")] = None,
) -> NodeList:
    """Every live node of every service, this instance included."""
    return NodeList.model_validate(
        {"self": discovery.self_info.node_id, "nodes": discovery.nodes(service)}
    )


@router.get(
    "/events",
    response_class=EventSourceResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def node_events(discovery: DiscoveryDep) -> EventSourceResponse:
    """`joined` for every current node, then `joined`, `updated` and `left` as they happen;
    and every second `heartbeats`: this instance's time (`now`) and each live node's last
    heartbeat (`last_seen` by node id), which join and update events do not carry as they
    happen (a heartbeat alone is not an update)."""
    subscription = discovery.subscribe()

    async def stream() -> AsyncIterator[ServerSentEvent]:
        events = aiter(subscription)
        upcoming = asyncio.ensure_future(anext(events))
        try:
            while True:
                done, _ = await asyncio.wait({upcoming}, timeout=HEARTBEATS_EVERY)
                if not done:
                    yield _heartbeats(discovery.nodes())
                    continue
                try:
                    event = upcoming.result()
                except StopAsyncIteration:
                    return
                upcoming = asyncio.ensure_future(anext(events))
                data = {
                    "node": event.node.model_dump(mode="json", by_alias=True),
                    "reason": event.reason,
                }
                yield ServerSentEvent(data=json.dumps(data), event=event.kind)
        finally:
            upcoming.cancel()
            subscription.close()

    return EventSourceResponse(stream(), ping=KEEP_ALIVE_SECONDS)


def _heartbeats(nodes: list[NodeInfo]) -> ServerSentEvent:
    data = {
        "now": datetime.now(UTC).isoformat(),
        "last_seen": {node.node_id: node.last_seen.isoformat() for node in nodes},
    }
    return ServerSentEvent(data=json.dumps(data), event="heartbeats")


@router.get("/{node_id}", response_model=NodeInfo, responses={404: {"description": "unknown"}})
async def get_node(node_id: str, discovery: DiscoveryDep) -> NodeInfo:
    node = discovery.get(node_id)
    if node is None:
        raise HTTPException(status_code=404, detail=f"no live node {node_id}")
    return node
