"""Publishes that wait for their PubAck on one wildcard reply subscription."""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from app.transports import nats_wire
from app.transports.deadlines import Deadlines


class AckInbox:
    """Publishes that wait for their PubAck on one wildcard reply subscription.

    What `js.publish` does, without a timer and a random token per message: thousands of
    concurrent publishes cost little more than `js.publish_async`, and each caller still gets
    its own ack or error (TimeoutError after `timeout`, NoRespondersError with no stream).
    """

    def __init__(self, nc: NatsClient) -> None:
        self._nc = nc
        self._prefix = ""
        self._ids = itertools.count()
        self._waiting: dict[str, asyncio.Future[Msg]] = {}
        self._ready: asyncio.Task[None] | None = None
        self._deadlines = Deadlines()

    async def request(
        self, subject: str, body: bytes, headers: dict[str, str], timeout: float
    ) -> dict[str, Any]:
        """The PubAck of one publish: `{}` for a plain success, else the parsed reply."""
        token, future = await self.send(subject, body, headers, timeout)
        try:
            return pub_ack(await future)
        finally:
            self.forget(token)

    async def send(
        self, subject: str, body: bytes, headers: dict[str, str], timeout: float
    ) -> tuple[str, asyncio.Future[Msg]]:
        """Publish; the future gets the PubAck, or TimeoutError after `timeout`. The caller
        calls `forget(token)` once the future is done."""
        if not self._nc.is_connected:
            # nats-py would keep the frame in its buffer and send it after a reconnect, maybe
            # after this publish was reported failed: a message must not land after that.
            raise nats.errors.ConnectionReconnectingError
        if self._ready is None or (self._ready.done() and self._ready.exception() is not None):
            self._ready = asyncio.ensure_future(self._listen())
        if not self._ready.done():
            await asyncio.shield(self._ready)
        token = str(next(self._ids))
        future: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()
        self._waiting[token] = future
        self._deadlines.fail_after(future, timeout, _no_ack)
        try:
            await nats_wire.publish(
                self._nc,
                subject,
                body,
                headers,
                reply=self._prefix + token,
                max_headers=nats_wire.JETSTREAM_MAX_HEADERS,
            )
        except BaseException:
            del self._waiting[token]
            raise
        return token, future

    def forget(self, token: str) -> None:
        self._waiting.pop(token, None)

    @property
    def waiting(self) -> int:
        """Publishes whose PubAck is still awaited."""
        return len(self._waiting)

    async def _listen(self) -> None:
        prefix = f"{self._nc.new_inbox()}."
        await self._nc.subscribe(f"{prefix}*", cb=self._on_reply)
        self._prefix = prefix

    async def _on_reply(self, msg: Msg) -> None:
        future = self._waiting.get(msg.subject[len(self._prefix) :])
        if future is not None and not future.done():
            future.set_result(msg)


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
