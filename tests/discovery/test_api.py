"""The membership endpoints of a real in-process service: /nodes, /nodes/{id}, /nodes/events."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator
from typing import Any

import httpx

from app.instance.services import services_of
from app.testing import NatsServer, running_app
from tests.discovery.conftest import OTHER_SERVICE, TTL


async def sse_events(response: httpx.Response) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """(event, data) pairs from a text/event-stream response; comments are skipped."""
    event, data = "message", ""
    async for line in response.aiter_lines():
        if line.startswith("event:"):
            event = line.removeprefix("event:").strip()
        elif line.startswith("data:"):
            data += line.removeprefix("data:").strip()
        elif not line and data:
            yield event, json.loads(data)
            event, data = "message", ""


async def membership(
    events: AsyncIterator[tuple[str, dict[str, Any]]],
) -> tuple[str, dict[str, Any]]:
    """The next join or leave, past the updates an instance makes to its own entry meanwhile
    (the leases it holds, in its metadata) and the heartbeats."""
    async for kind, data in events:
        if kind in ("joined", "left"):
            return kind, data
    raise AssertionError("the event stream ended")


async def test_in_process_servers_leave_the_process_signals_alone(nats_server, settings_for):
    """sse-starlette ends every event stream of the process once the server handling SIGTERM
    is exiting: with in-process test servers taking over SIGTERM, one stopping ended the
    others' streams (test_event_stream_delivers_joins_and_leaves failed so under load)."""
    before = signal.getsignal(signal.SIGTERM)
    async with running_app(settings_for(nats_url=nats_server.url)):
        assert signal.getsignal(signal.SIGTERM) is before


async def test_nodes_lists_every_live_node_and_filters_by_service(nats_server, settings_for):
    base = {"nats_url": nats_server.url, "node_ttl": TTL}
    async with (
        running_app(settings_for(**base)) as (_, url_a),
        running_app(settings_for(**base, service_name=OTHER_SERVICE)) as (app_b, _),
        httpx.AsyncClient(base_url=url_a) as client,
    ):
        b_id = services_of(app_b).discovery.self_info.node_id
        body = (await client.get("/nodes")).json()
        assert {node["node_id"] for node in body["nodes"]} >= {body["self"], b_id}
        mine = next(node for node in body["nodes"] if node["node_id"] == body["self"])
        assert mine["schema"] == 1
        assert mine["service"] == "qosmesh"
        assert mine["address"] == url_a
        assert mine["last_seen"].endswith("Z")

        billing = (await client.get("/nodes", params={"service": OTHER_SERVICE})).json()["nodes"]
        assert [node["node_id"] for node in billing] == [b_id]
        assert (await client.get(f"/nodes/{b_id}")).json()["service"] == OTHER_SERVICE
        assert (await client.get("/nodes/nobody")).status_code == 404
        ready = (await client.get("/readyz")).json()
        assert ready["checks"]["discovery"] == "ok"


async def test_event_stream_delivers_joins_and_leaves(nats_server: NatsServer, settings_for):
    base = {"nats_url": nats_server.url, "node_ttl": TTL}
    async with (
        running_app(settings_for(**base)) as (app_a, url_a),
        httpx.AsyncClient(base_url=url_a, timeout=10) as client,
        client.stream("GET", "/nodes/events") as response,
    ):
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response)
        first = await membership(events)
        assert first == ("joined", first[1])
        assert first[1]["node"]["node_id"] == services_of(app_a).discovery.self_info.node_id
        assert first[1]["reason"] is None

        async with running_app(settings_for(**base)) as (app_b, _):
            b_id = services_of(app_b).discovery.self_info.node_id
            kind, data = await asyncio.wait_for(membership(events), timeout=2)
            assert (kind, data["node"]["node_id"]) == ("joined", b_id)
        kind, data = await asyncio.wait_for(membership(events), timeout=2)
        assert (kind, data["node"]["node_id"], data["reason"]) == ("left", b_id, "graceful")
