"""The orders read model: one JSON record per order in a JetStream KV bucket, changed only by
compare-and-set so concurrent handlers on different instances never overwrite each other."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import Literal

from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.errors import KeyWrongLastSequenceError
from pydantic import BaseModel, Field

from app.errors import PublishError
from app.kv import Bucket, retrying, retrying_timed
from app.observability.spans import step_span
from app.retries import RetryBudget
from app.settings import Settings

log = logging.getLogger(__name__)
ORDER_ID = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")
_CAS_TRIES = 20


def _now() -> datetime:
    return datetime.now(UTC)


class Order(BaseModel):
    order_id: str
    sku: str
    quantity: int
    # withdrawn: its command was answered 503; a late event must not bring it back.
    status: Literal["pending", "confirmed", "withdrawn"] = "pending"
    paid: int = 0
    created_at: datetime = Field(default_factory=_now)
    updated_at: datetime = Field(default_factory=_now)
    payments: list[str] = Field(default_factory=list)


class OrderStore:
    """Every call rides through broker trouble within the publish budget (PublishError after)."""

    def __init__(self, bucket: Bucket, budget: RetryBudget) -> None:
        self._bucket = bucket
        self._budget = budget
        self._background: set[asyncio.Task[None]] = set()

    @classmethod
    async def open(cls, nc: NatsClient, js: JetStreamContext, settings: Settings) -> OrderStore:
        name = f"{settings.service_name.replace('-', '_')}_orders"
        bucket = await Bucket.open(nc, js, name, ttl=None, replicas=settings.replicas)
        return cls(bucket, RetryBudget.from_settings(settings))

    async def get(self, order_id: str) -> Order | None:
        if not ORDER_ID.match(order_id):
            return None
        read = partial(self._bucket.get, order_id)
        entry = await retrying_timed(read, self._budget, "order read")
        if entry is None:
            return None
        order = Order.model_validate_json(entry.value or b"{}")
        return None if order.status == "withdrawn" else order

    async def create(self, order: Order) -> None:
        """Record a new order; a repeat of the same order id keeps the first record."""
        # Revision 0: written only if the key never was. No order is ever deleted (a withdrawal
        # is a write), so this is `create` without its look at a deleted key's tombstone.
        write = partial(self._bucket.update, order.order_id, order.model_dump_json().encode(), 0)
        with contextlib.suppress(KeyWrongLastSequenceError):
            await retrying_timed(write, self._budget, "order write")

    def withdraw_later(self, order: Order) -> None:
        """`withdraw` in the background, best effort: with the broker away the event most
        likely did not reach it either (publishes never wait in the client's buffer)."""
        task = asyncio.create_task(self._withdraw_quietly(order))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _withdraw_quietly(self, order: Order) -> None:
        try:
            await self.withdraw(order)
        except PublishError as exc:
            log.warning("order %s: tombstone not written: %s", order.order_id, exc)

    async def withdraw(self, order: Order) -> None:
        """Replace the order with a tombstone: it reads as missing, and no change applies to
        it, so an event of it that reaches the broker after all (a lost ack) cannot bring it
        back. The tombstone lives as long as any other record of the bucket."""
        tombstone = order.model_copy(update={"status": "withdrawn", "updated_at": _now()})
        data = tombstone.model_dump_json().encode()
        put = partial(self._bucket.kv.put, order.order_id, data)
        await retrying(put, self._budget, "order withdraw")

    async def change(self, seed: Order, change: Callable[[Order], Order | None]) -> Order:
        """Apply `change` by compare-and-set, retrying on conflicts. `change` returns None
        when there is nothing to do; `seed` is used when the order is not recorded yet."""
        read = partial(self._bucket.get, seed.order_id)
        for _ in range(_CAS_TRIES):
            entry = await retrying_timed(read, self._budget, "order read")
            if entry is None:
                current, revision = seed, 0
            else:
                current, revision = Order.model_validate_json(entry.value), entry.revision
            if current.status == "withdrawn":
                return current
            changed = change(current)
            if changed is None:
                return current
            changed.updated_at = _now()
            data = changed.model_dump_json().encode()
            # Revision 0 writes only a key never written (no order is deleted: see `create`).
            write = partial(self._bucket.update, seed.order_id, data, revision)
            with step_span("kv update orders") as span:
                try:
                    await retrying_timed(write, self._budget, "order update")
                except KeyWrongLastSequenceError:
                    # Another write came first: the way compare-and-set works, not an error
                    # (a recorded exception would format a traceback for every conflict).
                    span.set_attribute("qosmesh.kv.conflict", True)
                    continue
            return changed
        raise RuntimeError(f"order {seed.order_id} kept changing under us")
