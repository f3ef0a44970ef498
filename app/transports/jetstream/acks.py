"""Publishes that wait for their PubAck on one wildcard reply subscription."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from app.brokers import nats_wire
from app.brokers.replies import Replies


class AckReplies(Replies):
    """Publishes that wait for their PubAck on one wildcard reply subscription.

    What `js.publish` does, without a timer and a random token per message: thousands of
    concurrent publishes cost little more than `js.publish_async`, and each caller still gets
    its own ack or error (TimeoutError after `timeout`, NoRespondersError with no stream).
    """

    def __init__(self, nc: NatsClient) -> None:
        super().__init__(nc, _no_ack)

    async def publish(
        self, subject: str, body: bytes, headers: Mapping[str, str], timeout: float
    ) -> dict[str, Any]:
        """The PubAck of one publish: `{}` for a plain success, else the parsed reply."""
        reply = await self.request(
            subject, body, headers, timeout, max_headers=nats_wire.JETSTREAM_MAX_HEADERS
        )
        return pub_ack(reply)

    async def send_publish(
        self, subject: str, body: bytes, headers: Mapping[str, str], timeout: float
    ) -> tuple[str, asyncio.Future[Msg]]:
        """`send` of a JetStream publish: the future gets the PubAck to read with `pub_ack`."""
        return await self.send(
            subject, body, headers, timeout, max_headers=nats_wire.JETSTREAM_MAX_HEADERS
        )


def pub_ack(reply: Msg) -> dict[str, Any]:
    """A PubAck: `{}` for a plain success, else the parsed reply (with `error` or `duplicate`);
    raises NoRespondersError when no stream took the subject."""
    if reply.headers and reply.headers.get("Status") == "503":
        raise nats.errors.NoRespondersError
    if b'"error"' not in reply.data and b'"duplicate"' not in reply.data:
        return {}  # {"stream":..., "seq":...}: nothing in it the caller reads
    result: dict[str, Any] = json.loads(reply.data)
    return result


def _no_ack() -> TimeoutError:
    return TimeoutError("no PubAck in time")
