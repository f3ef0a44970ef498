"""Requests that wait for their reply on one wildcard subscription.

What `nc.request` does, without a random token, a timer and a parsed reply per call: thousands
of requests at once cost little more than publishes, and each caller still gets its own reply
or TimeoutError after its timeout. JetStream publishes wait for their PubAck here, and the KV
buckets' hot operations (get, create, update) for their answer.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Mapping

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from app.brokers import nats_wire
from app.brokers.deadlines import Deadlines


class Replies:
    def __init__(self, nc: NatsClient, no_reply: Callable[[], BaseException]) -> None:
        self._nc = nc
        self._no_reply = no_reply
        self._prefix = ""
        self._ids = itertools.count()
        self._waiting: dict[str, asyncio.Future[Msg]] = {}
        self._ready: asyncio.Task[None] | None = None
        self._deadlines = Deadlines()

    async def request(
        self,
        subject: str,
        body: bytes,
        headers: Mapping[str, str],
        timeout: float,
        max_headers: int = 0,
    ) -> Msg:
        """The reply to one request, or `no_reply()` raised after `timeout`."""
        token, future = await self.send(subject, body, headers, timeout, max_headers)
        try:
            return await future
        finally:
            self.forget(token)

    async def send(
        self,
        subject: str,
        body: bytes,
        headers: Mapping[str, str],
        timeout: float,
        max_headers: int = 0,
    ) -> tuple[str, asyncio.Future[Msg]]:
        """Publish; the future gets the reply, or `no_reply()` after `timeout`. The caller
        calls `forget(token)` once the future is done."""
        if not self._nc.is_connected:
            # nats-py would keep the frame in its buffer and send it after a reconnect, maybe
            # after this request was reported failed: a message must not land after that.
            raise nats.errors.ConnectionReconnectingError
        if self._ready is None or (self._ready.done() and self._ready.exception() is not None):
            self._ready = asyncio.ensure_future(self._listen())
        if not self._ready.done():
            await asyncio.shield(self._ready)
        token = str(next(self._ids))
        future: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()
        self._waiting[token] = future
        self._deadlines.fail_after(future, timeout, self._no_reply)
        try:
            await nats_wire.publish(
                self._nc,
                subject,
                body,
                headers,
                reply=self._prefix + token,
                max_headers=max_headers,
            )
        except BaseException:
            del self._waiting[token]
            raise
        return token, future

    def forget(self, token: str) -> None:
        self._waiting.pop(token, None)

    @property
    def waiting(self) -> int:
        """Requests whose reply is still awaited."""
        return len(self._waiting)

    async def _listen(self) -> None:
        prefix = f"{self._nc.new_inbox()}."
        self._prefix = prefix
        sub = await self._nc.subscribe(f"{prefix}*", cb=self._on_reply)
        nats_wire.deliver_directly(sub, self._resolve)

    async def _on_reply(self, msg: Msg) -> None:
        self._resolve(msg)

    def _resolve(self, msg: Msg) -> None:
        future = self._waiting.get(msg.subject[len(self._prefix) :])
        if future is not None and not future.done():
            future.set_result(msg)
