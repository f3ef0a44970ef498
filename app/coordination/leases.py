"""Leases on a JetStream KV bucket: at most one instance of a service holds a named lease at a
time, so a job guarded by it (a sweeper, a scheduled report) runs on one instance only.

- **Acquire** by create: the key `<name>` of the bucket `<service>_leases` exists only while
  someone holds it. Every write carries the writer's own TTL (`APP_LEASE_TTL`, as the key's
  `Nats-TTL`): the server removes a key not renewed within it, so a holder that crashed or
  paused loses the lease without anyone's clock, and instances whose TTLs differ (a rolling
  change of the setting) each hold for exactly as long as the server keeps their key. The
  bucket's own max age is only raised to the longest TTL, never lowered.
- **Renew** by compare-and-set on the revision, every third of the TTL. A renewal that finds
  another revision means the lease was lost (it expired, and someone else created it).
- **Fencing.** The lease's token is the bucket's creation time (server time, whole seconds
  since 2020) in the high bits and its current revision in the low 32: it only grows, even when
  the bucket is deleted and made again (its revisions restart, its creation time is later), so
  every later holder's token is larger than every earlier one's. A protected resource keeps
  the largest token it has seen and refuses writes with a smaller one (`FencedRecord`, in
  fencing.py): a holder that paused past its TTL and wakes up still believing it holds the
  lease cannot overwrite its successor's work.
- **Knowing when it is lost.** The holder counts its lease valid until the TTL, minus a margin,
  after it *sent* the last confirmed renewal, on its own monotonic clock: the server's key
  outlives that moment, so two holders' confirmed intervals never overlap. `Lease.token` raises
  LeaseLostError once that moment has passed, before any more work is done.

- **Release** on stop: the key is deleted, and a core NATS message on
  `qm-leases.<service>.freed` tells the instances waiting for it to try at once rather than at
  their next poll (every sixth of the TTL). Anyone on the bus can send that message, so a
  waiter tries at most once per `WAKE_GAP` of the TTL, however many arrive: a flood of them
  costs the KV one request per waiter and lease per gap.

Observability: `qosmesh_lease_held{name}` is 1 on the holder; acquiring and losing are logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import nats.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscription
from nats.js.errors import KeyWrongLastSequenceError
from opentelemetry.metrics import CallbackOptions, Observation

from app.brokers import Brokers
from app.brokers.kv import TRANSIENT, Bucket, safe_key
from app.errors import LeaseLostError, StaleTokenError
from app.observability.instruments import meter
from app.settings import Settings

log = logging.getLogger(__name__)

MARGIN = 0.1
"""The share of the TTL a holder gives up at the end of each interval, for clock rates and the
time a renewal spends on its way to the server."""
REQUEST_TIMEOUT = 2.0
EPOCH = datetime(2020, 1, 1, tzinfo=UTC)
"""Where a fencing token's high bits (the bucket's creation, in seconds) count from."""
WAKE_GAP = 0.05
"""The least time, as a share of the TTL, between two tries of a waiter: a release heard sooner
after its last try waits out the rest (0.5 s with the default TTL of 10 s)."""


class Leases:
    """The leases of one instance: one KV bucket per service, its TTL the leases'."""

    def __init__(
        self,
        bucket: Bucket,
        holder: str,
        ttl: float,
        announce: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self._bucket = bucket
        self.holder = holder
        self.ttl = ttl
        self._announce = announce
        self._leases: dict[str, Lease] = {}
        self._hearing: NatsSubscription | None = None
        self.on_change: Callable[[list[str]], None] | None = None
        """Called with the names held, whenever one is taken or lost."""

    @classmethod
    async def open(cls, brokers: Brokers, settings: Settings, holder: str) -> Leases:
        name = f"{settings.service_name.replace('-', '_')}_leases"
        bucket = await Bucket.open(
            brokers.nc, brokers.js, name, ttl=settings.lease_ttl, replicas=settings.replicas
        )
        await bucket.keep_keys_for(settings.lease_ttl)
        subject = f"qm-leases.{settings.service_name}.freed"

        async def announce(lease: str) -> None:
            await brokers.nc.publish(subject, lease.encode())

        leases = cls(bucket, holder, settings.lease_ttl, announce)
        leases._hearing = await brokers.nc.subscribe(subject, cb=leases._freed)
        return leases

    def lease(self, name: str) -> Lease:
        """The lease `name` of this instance (one object per name)."""
        if name not in self._leases:
            lease = self._leases[name] = Lease(self._bucket, name, self.holder, self.ttl)
            lease.on_held = self._changed
            lease.on_released = self._announce
            _watched.append(lease)
        return self._leases[name]

    async def _freed(self, msg: Msg) -> None:
        """Another instance released a lease: those waiting for it try at once, rather than at
        their next poll (a crashed holder's lease is still waited out by its TTL)."""
        lease = self._leases.get(msg.data.decode(errors="replace"))
        if lease is not None and not lease.held:
            lease.freed.set()

    def held(self) -> list[str]:
        return sorted(name for name, lease in self._leases.items() if lease.held)

    def _changed(self, held: bool) -> None:
        if self.on_change is not None:
            self.on_change(self.held())

    async def close(self) -> None:
        """Release every lease held, so another instance takes over at once."""
        if self._hearing is not None:
            with contextlib.suppress(Exception):
                await self._hearing.unsubscribe()
        for lease in self._leases.values():
            await lease.release()
            with contextlib.suppress(ValueError):
                _watched.remove(lease)


class Lease:
    """One named lease, as one instance sees it."""

    def __init__(self, bucket: Bucket, name: str, holder: str, ttl: float) -> None:
        self._bucket = bucket
        self.name = name
        self.holder = holder
        self.ttl = ttl
        self.renew_every = ttl / 3
        self.wake_gap = ttl * WAKE_GAP
        self._tried = -math.inf  # monotonic, when this instance last tried to take it
        self._key = safe_key(name)
        self._revision: int | None = None
        self._epoch = 0  # the bucket's creation, in seconds since EPOCH: the token's high bits
        self._valid_until = 0.0  # monotonic
        self.on_confirmed: Callable[[int, float, float], None] | None = None
        """Called with (token, sent, valid until), monotonic, after each confirmed renewal."""
        self.on_held: Callable[[bool], None] | None = None
        """Called when `hold` finds the lease taken or lost."""
        self.on_released: Callable[[str], Awaitable[None]] | None = None
        """Called with the lease's name once this instance gave it up (to tell the others)."""
        self.freed = asyncio.Event()
        """Set when another instance says it released the lease."""

    @property
    def held(self) -> bool:
        return self._revision is not None and time.monotonic() < self._valid_until

    @property
    def token(self) -> int:
        """The fencing token while the lease is held; LeaseLostError once it is not."""
        if not self.held:
            raise LeaseLostError(f"lease {self.name!r} is not held by {self.holder}")
        assert self._revision is not None
        return (self._epoch << 32) | self._revision

    def _value(self) -> bytes:
        since = datetime.now(UTC).isoformat()
        return json.dumps({"holder": self.holder, "renewed": since}).encode()

    async def acquire(self) -> bool:
        """Take the lease if nobody holds it; whether this instance holds it now."""
        if self.held:
            return await self.renew()
        sent = self._tried = time.monotonic()
        try:
            revision = await self._bucket.create(
                self._key, self._value(), REQUEST_TIMEOUT, ttl=self.ttl
            )
        except KeyWrongLastSequenceError:
            return False  # somebody holds it
        except nats.errors.NoRespondersError:
            # Nothing stores the bucket's subjects: it may be gone. Made again, its creation
            # time (the tokens' high bits) is later, so the next holder's token is larger.
            try:
                await self._bucket.make_again_if_gone()
            except Exception as exc:  # the next try looks again
                log.debug("lease bucket not made again: %s", exc)
            raise
        created = await self._bucket.created()
        self._epoch = max(0, int((created - EPOCH).total_seconds()))
        self._confirmed(revision, sent)
        log.info("lease %s acquired (token %d)", self.name, self.token, extra={"lease": self.name})
        return True

    async def renew(self) -> bool:
        """Extend the lease; False (and no longer held) when it was lost."""
        if self._revision is None:
            return False
        sent = time.monotonic()
        try:
            revision = await self._bucket.update(
                self._key, self._value(), self._revision, REQUEST_TIMEOUT, ttl=self.ttl
            )
        except KeyWrongLastSequenceError:
            self._lost("another instance holds it now")
            return False
        except TRANSIENT as exc:
            if not self.held:
                self._lost(f"not renewed within its TTL ({type(exc).__name__})")
            return self.held
        if not self.held:
            # Confirmed, but only after the interval this instance counted on had passed: a
            # pause may have let someone else work meanwhile. Start afresh rather than carry on.
            self._lost("renewed too late")
            return False
        self._confirmed(revision, sent)
        return True

    async def _until_freed(self, timeout: float) -> None:
        """Wait `timeout` seconds, or less if another instance says it released the lease, but
        never less than `wake_gap` after the last try: what was heard meanwhile is one wake-up."""
        deadline = time.monotonic() + timeout
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self.freed.wait()
        early = min(deadline, self._tried + self.wake_gap) - time.monotonic()
        if early > 0:
            await asyncio.sleep(early)
        self.freed.clear()  # before the try that follows, which sees every release heard

    async def release(self) -> None:
        """Give the lease up (the key goes, so another instance can take it at once)."""
        revision, self._revision = self._revision, None
        if revision is None:
            return
        try:
            await self._bucket.kv.delete(self._key, last=revision)
            log.info("lease %s released", self.name, extra={"lease": self.name})
            if self.on_released is not None:
                await self.on_released(self.name)
        except Exception as exc:  # it expires by itself within the TTL
            log.debug("lease %s not released: %s", self.name, exc)

    def _confirmed(self, revision: int, sent: float) -> None:
        self._revision = revision
        self._valid_until = sent + self.ttl * (1 - MARGIN)
        if self.on_confirmed is not None:
            self.on_confirmed(revision, sent, self._valid_until)

    def _lost(self, why: str) -> None:
        if self._revision is not None:
            log.warning("lease %s lost: %s", self.name, why, extra={"lease": self.name})
        self._revision = None

    async def hold(self, on_change: Callable[[bool], None] = lambda held: None) -> None:
        """Try to take the lease, and keep it, until cancelled; `on_change(held)` when that
        changes. The lease is released on cancel."""
        was = False
        try:
            while True:
                try:
                    now = await (self.renew() if self.held else self.acquire())
                except TRANSIENT as exc:
                    log.debug("lease %s: %s", self.name, exc)
                    now = self.held
                if now != was:
                    on_change(now)
                    if self.on_held is not None:
                        self.on_held(now)
                    was = now
                if now:
                    await asyncio.sleep(self.renew_every)
                else:
                    await self._until_freed(self.renew_every / 2)
        finally:
            await self.release()


@contextlib.asynccontextmanager
async def leader(lease: Lease) -> AsyncIterator[Lease]:
    """`async with leader(lease):` waits until this instance holds `lease`, then runs the body
    while it keeps it; the body is cancelled, and LeaseLostError raised, when it loses it."""
    acquired = asyncio.Event()
    body = asyncio.current_task()
    assert body is not None
    lost = False

    def changed(held: bool) -> None:
        nonlocal lost
        if held:
            acquired.set()
        elif acquired.is_set() and not lost:
            lost = True
            body.cancel(f"lease {lease.name} lost")

    keeper = asyncio.create_task(lease.hold(changed), name=f"lease {lease.name}")
    try:
        await acquired.wait()
        try:
            yield lease
        except asyncio.CancelledError as exc:
            # Only the cancel this context sent becomes LeaseLostError; the caller's own
            # (the instance stopping) goes on as a cancellation.
            if not lost or body.uncancel() > 0:
                raise
            raise LeaseLostError(f"lease {lease.name!r} lost") from exc
    finally:
        keeper.cancel()
        # Not `await keeper`: a cancel of this task meanwhile must not be taken for the keeper's.
        await asyncio.wait({keeper})


def singleton(
    leases: Leases, name: str, every: float
) -> Callable[[Callable[[int], Awaitable[None]]], Callable[[], Coroutine[Any, Any, None]]]:
    """A periodic job that runs on one instance only: `job(token)` every `every` seconds while
    this instance holds the lease `name`. The decorated function becomes a coroutine function
    to run (supervised) for the life of the instance."""

    def wrap(job: Callable[[int], Awaitable[None]]) -> Callable[[], Coroutine[Any, Any, None]]:
        lease = leases.lease(name)

        async def run() -> None:
            failure = ""
            while True:
                try:
                    async with leader(lease):
                        while True:
                            failure = await _period(name, job, lease.token, failure)
                            await asyncio.sleep(every)
                except LeaseLostError as exc:
                    log.info("singleton %s stops here: %s", name, exc)  # until it holds again

        return run

    return wrap


async def _period(
    name: str, job: Callable[[int], Awaitable[None]], token: int, last_failure: str
) -> str:
    """One run of a singleton's job: how it failed ("" when it did not). The same failure as
    the last one is logged at debug: a frequent job in a broker outage would repeat it."""
    try:
        await job(token)
    except StaleTokenError as exc:
        raise LeaseLostError(str(exc)) from exc
    except (LeaseLostError, asyncio.CancelledError):
        raise
    except Exception as exc:  # the next period tries again
        failure = f"{type(exc).__name__}: {exc}"
        level = logging.DEBUG if failure == last_failure else logging.WARNING
        log.log(level, "singleton %s failed: %s", name, failure)
        return failure
    return ""


@dataclass(frozen=True, slots=True)
class Singleton:
    """A periodic job a domain runs on one instance of its service: its module's
    `singletons(state)` returns them, and the runtime runs each under the lease `name`."""

    name: str
    every: float
    job: Callable[[int], Awaitable[None]]


_watched: list[Lease] = []


def _observe_held(options: CallbackOptions) -> Iterable[Observation]:
    for lease in list(_watched):
        yield Observation(1 if lease.held else 0, {"name": lease.name})


meter.create_observable_gauge(
    "qosmesh.lease.held",
    callbacks=[_observe_held],
    unit="1",
    description="1 on the instance holding the lease, 0 elsewhere",
)
