"""Receiver-side idempotency for QoS 2: which messages a consumer has applied, or is applying.

Before a QoS 2 handler runs, the router *claims* the message id atomically; after the handler
returns it marks the claim done, and when the handler fails it releases the claim for the
redelivery. So duplicates arriving at the same moment on different instances, a redelivery, or
a republish after the broker's dedupe window run the handler once.

A claim whose holder died (no result within `stale_after` seconds) is taken over by the next
delivery. A delivery that finds the message being applied elsewhere right now raises
`ClaimBusy` and is redelivered later, when it finds the claim done or stale.

A claim has an owner: the `Claim` that `claim` returns carries a token (and, on KV, the
revision written). `release` removes the claim only while it is still that owner's, so a
delivery whose claim was taken over can never delete the winner's claim or done mark.
`complete` records "done" whoever holds the claim now: this delivery's effect has been applied,
so "done" is the truth.

The stores: `MemoryClaimStore` here, a KV bucket per service with the JetStream transport
(app/transports/jetstream/claims.py), Redis keys with the Redis one
(app/transports/redis/claims.py).

Once the handler has returned, the done mark alone is retried until it is written, with the
claim still renewed (app/bus/dispatch.py). Where this stops: a crash after the handler's effect
and before the claim is marked done runs the handler once more, and so does a store away for
longer than the claim's stale time, or a holder stopped that long while its handler runs (it
runs on when it resumes, its claim taken over meanwhile). A handler whose effect must never
repeat writes the effect and the message id in one atomic step (see the example's payment
handler).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any, Protocol

from app.errors import QosMeshError

log = logging.getLogger(__name__)

DONE = "done"
CLAIMED = "claimed"
"""How a claim in progress begins when the store itself expires it once it goes stale (a Redis
PX, a KV key's own TTL): busy for as long as it exists, whatever any host's clock says."""


class ClaimBusy(QosMeshError):
    """Another delivery of the same message is being applied right now; retry later."""


@dataclass(slots=True, frozen=True)
class Claim:
    """One delivery's hold on a message key."""

    key: str
    value: str  # "processing <unix time> <token>": unique to this holder
    revision: int = 0  # on KV, the revision the claim was written at


class ClaimStore(Protocol):
    """Claims on message keys, remembered for at least the configured TTL."""

    async def claim(self, key: str, stale_after: float) -> Claim | None:
        """A Claim: apply the message now. None: it was applied already. Raises ClaimBusy."""
        ...

    async def complete(self, claim: Claim) -> None:
        """The message was applied: every later claim answers None."""
        ...

    async def release(self, claim: Claim) -> None:
        """The handler failed: let the next delivery claim it (if the claim is still ours)."""
        ...

    async def refresh(self, claim: Claim) -> Claim | None:
        """The handler still runs: the claim, renewed so it does not go stale; None when it
        is no longer ours."""
        ...


class HeldClaims:
    """The claims of the QoS 2 handlers running now, renewed by one sweep, so a claim never
    goes stale while its handler runs (a slow handler is not a dead one)."""

    def __init__(self) -> None:
        self._held: dict[int, list[Any]] = {}  # ticket -> [store, claim, stale_after, renewed]
        self._tickets = itertools.count()

    def hold(self, store: ClaimStore, claim: Claim, stale_after: float) -> int:
        ticket = next(self._tickets)
        self._held[ticket] = [store, claim, stale_after, time.monotonic()]
        return ticket

    def current(self, ticket: int) -> Claim:
        """The claim as last renewed; still renewed."""
        claim: Claim = self._held[ticket][1]
        return claim

    def let_go(self, ticket: int) -> Claim:
        """The claim as last renewed; no longer renewed."""
        claim: Claim = self._held.pop(ticket)[1]
        return claim

    async def renew(self) -> None:
        """Runs until cancelled."""
        while True:
            period = min((held[2] / 3 for held in self._held.values()), default=1.0)
            await asyncio.sleep(max(0.05, period))
            now = time.monotonic()
            for ticket, held in list(self._held.items()):
                store, claim, stale_after, renewed = held
                if now - renewed < stale_after / 3:
                    continue
                try:
                    fresh = await store.refresh(claim)
                except Exception as exc:
                    log.warning("claim %s not renewed: %s", claim.key, exc)
                    continue
                if fresh is None:
                    log.warning("claim %s was taken over while its handler ran", claim.key)
                if ticket in self._held:
                    self._held[ticket][1:] = [fresh or claim, stale_after, now]


def processing_value() -> str:
    return f"processing {time.time():.3f} {secrets.token_hex(8)}"


def renewed_value(value: str) -> str:
    """The same holder's claim (same token), started now."""
    token = value.rsplit(" ", 1)[-1]
    return f"processing {time.time():.3f} {token}"


def decide(value: str, stale_after: float) -> bool | None:
    """For an existing claim: False when done, None when it may be taken over, else busy."""
    if value == DONE:
        return False
    if value.startswith(CLAIMED):
        raise ClaimBusy("message is being applied by another delivery")
    # An older version's claim, "processing <unix time> <token>": judged by this host's clock.
    parts = value.split(" ")
    try:
        stale = time.time() - float(parts[1]) >= stale_after
    except (IndexError, ValueError):
        stale = True
    if stale:
        return None
    raise ClaimBusy("message is being applied by another delivery")


class MemoryClaimStore:
    """In-process store for unit tests and the memory transport."""

    def __init__(self, ttl: float) -> None:
        self._ttl = ttl
        self._claims: dict[str, tuple[str, float]] = {}

    async def claim(self, key: str, stale_after: float) -> Claim | None:
        existing = self._claims.get(key)
        fresh = existing is not None and time.monotonic() - existing[1] < self._ttl
        if existing is not None and fresh and decide(existing[0], stale_after) is False:
            return None
        value = processing_value()
        self._claims[key] = (value, time.monotonic())
        return Claim(key, value)

    async def complete(self, claim: Claim) -> None:
        self._claims[claim.key] = (DONE, time.monotonic())

    async def release(self, claim: Claim) -> None:
        if self._claims.get(claim.key, ("", 0.0))[0] == claim.value:
            del self._claims[claim.key]

    async def refresh(self, claim: Claim) -> Claim | None:
        if self._claims.get(claim.key, ("", 0.0))[0] != claim.value:
            return None
        fresh = Claim(claim.key, renewed_value(claim.value))
        self._claims[claim.key] = (fresh.value, time.monotonic())
        return fresh
