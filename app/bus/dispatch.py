"""How a delivery reaches its handler: size-checked and decoded inside its processing span, then
run under the guarantee its QoS asks for.

- QoS 0 and 1: the handler runs; the transport settles the delivery by what it returns or
  raises (app/transports/consuming.py).
- QoS 2: the handler runs under a claim in its transport's claim store: a copy whose claim is
  held or done is a duplicate, not run. The claim is renewed while the handler runs, released
  when it raises, and marked done after it returns: a done mark that fails is tried again,
  alone, with the claim still renewed, never by running the handler again.
- A transactional handler (`subscribe(..., transactional=True)`) runs inside the inbox
  transaction that records the message id with its effects (app/database/inbox.py), at QoS 1
  and 2, instead of under a claim.

The handler given here is already cut at its deadline (app/bus/handler_deadlines.py): the
deadline bounds the service's own handler alone, so a claim, its done mark and the inbox
transaction's commit are outside it.

A dispatcher answers False for a duplicate it did not run, True otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from app.errors import ConfigurationError
from app.messages import DeadLetterReason, DecodeError, Envelope, Message, QoS, decode_message
from app.observability.instruments import dedupe_hits
from app.observability.spans import process_span
from app.qos.claims import ClaimStore, HeldClaims
from app.qos.retries import backoff
from app.transports.base import Delivery

if TYPE_CHECKING:
    from app.database.connection import Database

log = logging.getLogger(__name__)

DONE_RETRY_CAP = 2.0
"""The longest pause between two tries of a done mark."""


def in_transaction(
    database: Database | None,
    handler: Callable[..., Awaitable[None]],
    consumer: str,
    qos: QoS,
) -> Callable[[Message], Awaitable[bool]]:
    """`handler(message, session)` as a plain handler, once per message id (the inbox):
    False for a message already handled."""
    if database is None:
        raise ConfigurationError(f"{consumer}: a transactional handler needs the database")
    if qos == QoS.AT_MOST_ONCE:
        raise ConfigurationError(f"{consumer}: QoS 0 messages cannot be handled in the inbox")
    from app.database.inbox import handle_once

    async def run(message: Message) -> bool:
        if await handle_once(database, consumer, message, handler):
            return True
        dedupe_hits.add(1, {"side": "inbox"})
        return False

    return run


def dispatcher(
    types: dict[str, type[Message]],
    handler: Callable[[Any], Awaitable[bool | None]],
    qos: QoS,
    consumer: str,
    *,
    system: str,
    claims: ClaimStore | None,
    held: HeldClaims,
    stale_after: float,
    max_bytes: int,
) -> Callable[[Envelope, Delivery], Awaitable[bool]]:
    """The delivery callback of one subscription. `claims` is the QoS 2 claim store (None:
    the handler runs unclaimed), `held` renews the claims of running handlers, and a claim is
    stale `stale_after` seconds after its last renewal."""

    async def on_delivery(envelope: Envelope, delivery: Delivery) -> bool:
        with process_span(envelope, qos, system, delivery.attempt) as span:
            if len(envelope.body) > max_bytes:
                raise DecodeError(f"body of {len(envelope.body)} bytes", DeadLetterReason.OVERSIZED)
            message = decode_message(envelope, types)
            if claims is None:
                # False only from the inbox: a message already handled.
                if await handler(message) is False:
                    span.set_attribute("qosmesh.duplicate", True)
                    return False
                return True
            key = f"{consumer}.{message.message_id}"
            claim = await claims.claim(key, stale_after=stale_after)
            if claim is None:
                dedupe_hits.add(1, {"side": "receiver"})
                span.set_attribute("qosmesh.duplicate", True)
                return False
            ticket = held.hold(claims, claim, stale_after)
            try:
                await handler(message)
            except BaseException:
                with contextlib.suppress(Exception):
                    await claims.release(held.let_go(ticket))
                raise
            await mark_done(claims, held, ticket, consumer)
            return True

    return on_delivery


async def mark_done(claims: ClaimStore, held: HeldClaims, ticket: int, consumer: str) -> None:
    """Record that the handler's effect is applied. From here the delivery never runs the
    handler again: the done mark alone is tried until it is written (or the process dies),
    with the claim still renewed meanwhile, so no other delivery takes it over while the store
    is away for less than the claim's stale time (docs/qos.md)."""
    attempt = 0
    while True:
        try:
            await claims.complete(held.current(ticket))
        except Exception as exc:
            attempt += 1
            delay = backoff(attempt, base=0.2, cap=DONE_RETRY_CAP)
            log.warning(
                "%s: the done mark of a handled message failed (%s); tried again in %.1f s, "
                "the handler is not run again",
                consumer,
                exc,
                delay,
            )
            await asyncio.sleep(delay)
            continue
        held.let_go(ticket)
        return
