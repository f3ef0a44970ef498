"""Every instance is a NATS micro service (ADR-32): raw PING, INFO and STATS requests, for all
services, for the service's name and for its name + id, get replies of the ADR-32 types, which
are checked against JSON schemas written from ADR-32's tables. A stopped instance is silent."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import nats
import nats.errors
import pytest
from nats.aio.client import Client as NatsClient

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SERVICE = "console-test"
SEMVER = r"^\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$"
IDENTITY = {
    "name": {"type": "string", "pattern": "^[A-Za-z0-9_-]+$"},
    "id": {"type": "string", "minLength": 1},
    "version": {"type": "string", "pattern": SEMVER},
    "metadata": {"type": ["object", "null"], "additionalProperties": {"type": "string"}},
}
PING = {
    "type": "object",
    "required": ["type", "name", "id", "version"],
    "properties": {"type": {"const": "io.nats.micro.v1.ping_response"}, **IDENTITY},
}
INFO = {
    "type": "object",
    "required": ["type", "name", "id", "version", "description", "endpoints"],
    "properties": {
        "type": {"const": "io.nats.micro.v1.info_response"},
        **IDENTITY,
        "description": {"type": "string"},
        "endpoints": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "subject", "queue_group"],
                "properties": {
                    "name": {"type": "string"},
                    "subject": {"type": "string"},
                    "queue_group": {"type": "string"},
                    "metadata": {"type": ["object", "null"]},
                },
            },
        },
    },
}
STATS = {
    "type": "object",
    "required": ["type", "name", "id", "version", "started", "endpoints"],
    "properties": {
        "type": {"const": "io.nats.micro.v1.stats_response"},
        **IDENTITY,
        "started": {"type": "string", "pattern": r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$"},
        "endpoints": {
            "type": "array",
            "items": {
                "type": "object",
                "required": [
                    "name",
                    "subject",
                    "queue_group",
                    "num_requests",
                    "num_errors",
                    "last_error",
                    "processing_time",
                    "average_processing_time",
                ],
                "properties": {
                    "name": {"type": "string"},
                    "subject": {"type": "string"},
                    "queue_group": {"type": "string"},
                    "num_requests": {"type": "integer", "minimum": 0},
                    "num_errors": {"type": "integer", "minimum": 0},
                    "last_error": {"type": "string"},
                    "processing_time": {"type": "integer", "minimum": 0},  # nanoseconds
                    "average_processing_time": {"type": "integer", "minimum": 0},
                },
            },
        },
    },
}


async def everyone(nc: NatsClient, subject: str, wait: float = 0.5) -> list[dict[str, Any]]:
    """Every reply to one request within `wait` seconds (a request to all services)."""
    inbox = nc.new_inbox()
    replies: list[dict[str, Any]] = []

    async def collect(msg: Any) -> None:
        replies.append(json.loads(msg.data))

    sub = await nc.subscribe(inbox, cb=collect)
    await nc.publish(subject, b"", reply=inbox)
    await asyncio.sleep(wait)
    await sub.unsubscribe()
    return replies


async def one(nc: NatsClient, subject: str) -> dict[str, Any]:
    reply = await nc.request(subject, b"", timeout=2)
    data: dict[str, Any] = json.loads(reply.data)
    print(f"{subject} -> {json.dumps(data)}")
    return data


def test_an_instance_answers_ping_info_and_stats_as_adr32_says(
    service_process, nats_server, tmp_path
):
    env = {
        "APP_NATS_URL": nats_server.url,
        "APP_DOMAIN": "tests.console.flaky_domain",
        "APP_SERVICE_NAME": SERVICE,
        "FLAKY_FLAG": str(tmp_path / "flag"),
        "FLAKY_EFFECTS": str(tmp_path / "effects"),
        "PYTHONPATH": str(ROOT),
    }
    first, second = service_process(env, wait="/readyz"), service_process(env, wait="/readyz")
    ids = {str(httpx.get(s.url + "/nodes").json()["self"]) for s in (first, second)}
    first_id = str(httpx.get(first.url + "/nodes").json()["self"])
    for note in ("a", "b", "c"):
        assert httpx.post(first.url + "/flaky", json={"note": note}).status_code == 202
    deadline = time.monotonic() + 10
    while (
        not (tmp_path / "effects").exists() or len((tmp_path / "effects").read_text().split()) < 3
    ):
        assert time.monotonic() < deadline
        time.sleep(0.05)

    async def exchange() -> None:
        nc = await nats.connect(nats_server.url)
        try:
            pings = await everyone(nc, "$SRV.PING")
            for ping in pings:
                jsonschema.validate(ping, PING)
            assert {p["id"] for p in pings if p["name"] == SERVICE} == ids
            for ping in await everyone(nc, f"$SRV.PING.{SERVICE}"):
                assert ping["name"] == SERVICE
            ping = await one(nc, f"$SRV.PING.{SERVICE}.{first_id}")
            jsonschema.validate(ping, PING)
            assert ping["id"] == first_id

            info = await one(nc, f"$SRV.INFO.{SERVICE}.{first_id}")
            jsonschema.validate(info, INFO)
            assert info["endpoints"] == []  # none: an endpoint would take messages
            subscriptions = json.loads(info["metadata"]["subscriptions"])
            assert subscriptions == [
                {"subject": f"{SERVICE}.flaky_job", "qos": 1, "transport": "jetstream"}
            ]
            assert info["metadata"]["address"] == first.url

            handled = 0
            for stats in await everyone(nc, f"$SRV.STATS.{SERVICE}"):
                jsonschema.validate(stats, STATS)
                (endpoint,) = stats["endpoints"]
                assert endpoint["name"] == f"{SERVICE}__flaky_job"
                assert endpoint["subject"] == f"{SERVICE}.flaky_job"
                assert endpoint["queue_group"] == SERVICE
                assert endpoint["num_errors"] == 0
                if endpoint["num_requests"]:
                    assert 0 < endpoint["average_processing_time"] <= endpoint["processing_time"]
                handled += endpoint["num_requests"]
            assert handled == 3  # each message handled once, by one of the two
            print(f"$SRV.STATS.{SERVICE} -> {handled} handled across {len(ids)} instances")
        finally:
            await nc.close()

    asyncio.run(exchange())
    second.stop(signal.SIGTERM)

    async def after_stop() -> None:
        nc = await nats.connect(nats_server.url)
        try:
            second_id = (ids - {first_id}).pop()
            with pytest.raises((nats.errors.NoRespondersError, nats.errors.TimeoutError)):
                await nc.request(f"$SRV.PING.{SERVICE}.{second_id}", b"", timeout=1)
            assert [p["id"] for p in await everyone(nc, f"$SRV.PING.{SERVICE}")] == [first_id]
        finally:
            await nc.close()

    asyncio.run(after_stop())
