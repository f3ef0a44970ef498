"""The transactional outbox: a message published with a session is a row written in the
caller's transaction, so it reaches the broker if and only if that transaction commits.

A relay in every instance publishes committed rows with their message id as the broker's
dedupe id (`Nats-Msg-Id`; the Redis dedupe key for QoS 2), then marks them sent. Instances
share the rows with `FOR UPDATE SKIP LOCKED`. Rows sharing an ordering key are published in
commit order, by two locks:

- Writing: a row with a key is inserted under a transaction-scoped advisory lock on that key,
  so two transactions writing the same key commit one after the other, and the later one's row
  has the higher id. Id order is commit order, within a key.
- Relaying: a relay publishes a keyed row only when every unsent row of that key before it is
  in its own locked batch, in order. A row of the key locked by another relay (a gap) stops it
  there; the rest of the batch waits for a later round. A relay publishes one key's rows one
  after the other, each after the broker acked the one before.

A row the broker refuses as it is (over its max_payload, which can be below
APP_MAX_MESSAGE_BYTES) is set aside as dead: retrying cannot help, and it would hold up its
key's later rows for ever. It stays in the table, counted by `qosmesh_outbox_dead`.

The relay wakes on LISTEN/NOTIFY and polls once a second for what a lost notification missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

import asyncpg
from opentelemetry import context, propagate
from sqlalchemy import delete, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from app import failpoints
from app.database.connection import Database, Transaction, asyncpg_url
from app.database.metrics import outbox_levels, relay_duration
from app.database.tables import http_keys, inbox, outbox
from app.errors import MessageTooLargeError, QosMeshError
from app.messages import Envelope, QoS
from app.observability.spans import sending_traced
from app.settings import Settings

log = logging.getLogger(__name__)

CHANNEL = "qosmesh_outbox"
POLL_EVERY = 1.0
LEVELS_EVERY = 5.0
PRUNE_EVERY = 60.0
BACKOFF_CAP = 5.0
HELD_UP_PAUSE = 0.01

Publish = Callable[[Envelope, QoS, str], Awaitable[None]]
"""Publish an envelope at a QoS through the named transport, as the bus does; raises when the
broker did not confirm it (or there is no broker connection right now)."""


_ADD = text(
    "SELECT qosmesh_outbox_add(:message_id, :subject, CAST(:qos AS smallint), :transport,"
    " :ordering_key, CAST(:headers AS jsonb), :body)"
)


async def add(
    session: Transaction,
    envelope: Envelope,
    qos: QoS,
    transport: str,
    ordering_key: str | None = None,
) -> None:
    """Write `envelope` to the outbox in `session`'s transaction (begun if it was not): one
    round trip to a function (migration 0001) that takes the key's lock, inserts the row and
    notifies the relays."""
    if sending_traced():
        propagate.inject(envelope.headers)  # the relay's publish joins the caller's trace
    await session.execute(
        _ADD,
        {
            "message_id": envelope.message_id,
            "subject": envelope.subject,
            "qos": int(qos),
            "transport": transport,
            "ordering_key": ordering_key,
            "headers": json.dumps(envelope.headers),
            "body": envelope.body,
        },
    )


async def withdraw(database: Database, subject: str, message_id: str) -> bool:
    """Delete the message's row if the relay has not published it yet (a cancel): whether it
    was there. A row a relay is publishing right now is waited for, and then found sent."""
    async with database.transaction() as session:
        withdrawn = await session.execute(
            delete(outbox)
            .where(
                outbox.c.sent_at.is_(None),
                outbox.c.message_id == message_id,
                outbox.c.subject == subject,
            )
            .returning(outbox.c.id)
        )
        return withdrawn.first() is not None


@dataclass(slots=True)
class _Row:
    id: int
    envelope: Envelope
    qos: QoS
    transport: str
    key: str | None
    created_at: float  # epoch seconds


@dataclass(slots=True)
class _RunOutcome:
    sent: list[_Row] = field(default_factory=list)
    dead: list[tuple[_Row, str]] = field(default_factory=list)  # with why
    failed: _Row | None = None  # where the run stopped, to be retried
    error: str = ""


def publishable(batch: Sequence[_Row], unsent: Sequence[tuple[int, str]]) -> list[list[_Row]]:
    """The rows of `batch` a relay may publish now, as runs to publish in order: an unkeyed row
    alone, and per key the rows of the batch from that key's oldest unsent row on, up to the
    first unsent row of the key the batch does not hold. `unsent` is (id, key) of every unsent
    row of the batch's keys up to the batch's last id, in id order."""
    mine = {row.id: row for row in batch}
    runs: dict[str, list[_Row]] = {}
    blocked: set[str] = set()
    for row_id, key in unsent:
        if key in blocked:
            continue
        row = mine.get(row_id)
        if row is None:
            blocked.add(key)  # another relay holds it: ours of this key wait
        else:
            runs.setdefault(key, []).append(row)
    unkeyed = [[row] for row in batch if row.key is None]
    return unkeyed + list(runs.values())


class Relay:
    """Publishes committed outbox rows and prunes old ones; one per instance."""

    def __init__(self, database: Database, publish: Publish, settings: Settings) -> None:
        self._database = database
        self._publish = publish
        self._batch = settings.outbox_batch
        self._retention = timedelta(seconds=settings.outbox_retention)
        self._inbox_retention = timedelta(seconds=settings.inbox_retention)
        self._keys_ttl = timedelta(seconds=settings.idempotency_ttl)
        self._wake = asyncio.Event()
        self._listener: asyncpg.Connection | None = None
        self._levels_at = 0.0
        self._pruned_at = 0.0

    async def run(self) -> None:
        """Relay until cancelled. Errors (the database or the broker away) are logged and
        retried with backoff; nothing committed is lost by them."""
        delay = 0.1
        while True:
            try:
                await self._listen()
                while await self.relay_once():
                    pass
                await self._housekeeping()
                delay = 0.1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), POLL_EVERY)
                self._wake.clear()
            except asyncio.CancelledError:
                await self._unlisten()
                raise
            except Exception as exc:
                log.warning("outbox relay: %s; retrying in %.1fs", _describe(exc), delay)
                await self._unlisten()
                await asyncio.sleep(delay)
                delay = min(BACKOFF_CAP, delay * 2)

    async def relay_once(self) -> bool:
        """One batch: lock up to APP_OUTBOX_BATCH unsent rows, publish what may go now, mark
        it sent. Whether to go on: a full batch went out (more may be waiting), or rows of it
        wait behind another relay's rows of their key (tried again after a short pause)."""
        async with self._database.engine.begin() as session:
            rows = await self._lock_batch(session)
            if not rows:
                return False
            runs = publishable(rows, await self._unsent_of_keys(session, rows))
            outcomes = await asyncio.gather(*(self._publish_run(run) for run in runs))
            sent = [row.id for outcome in outcomes for row in outcome.sent]
            dead = [pair for outcome in outcomes for pair in outcome.dead]
            failed = {o.failed.id: o.error for o in outcomes if o.failed is not None}
            if sent:
                await session.execute(
                    update(outbox)
                    .where(outbox.c.id.in_(sent))
                    .values(sent_at=func.clock_timestamp())
                )
            for row, error in dead:
                log.error(
                    "outbox row %d (message %s to %s) set aside as dead: %s",
                    *(row.id, row.envelope.message_id, row.envelope.subject, error),
                )
                await session.execute(
                    update(outbox)
                    .where(outbox.c.id == row.id)
                    .values(
                        dead_at=func.clock_timestamp(),
                        attempts=outbox.c.attempts + 1,
                        last_error=error[:500],
                    )
                )
            for row_id, error in failed.items():
                await session.execute(
                    update(outbox)
                    .where(outbox.c.id == row_id)
                    .values(attempts=outbox.c.attempts + 1, last_error=error[:500])
                )
        if failed:
            first = next(iter(failed.values()))
            raise RelayError(f"{len(failed)} outbox row(s) not confirmed: {first}")
        if len(sent) + len(dead) < len(rows):  # held up by another relay's rows of their keys
            await asyncio.sleep(HELD_UP_PAUSE)
            return True
        return len(rows) >= self._batch

    async def _lock_batch(self, session: AsyncConnection) -> list[_Row]:
        result = await session.execute(
            select(
                outbox.c.id,
                outbox.c.message_id,
                outbox.c.subject,
                outbox.c.qos,
                outbox.c.transport,
                outbox.c.ordering_key,
                outbox.c.headers,
                outbox.c.body,
                func.extract("epoch", outbox.c.created_at),
            )
            .where(outbox.c.sent_at.is_(None), outbox.c.dead_at.is_(None))
            .order_by(outbox.c.id)
            .limit(self._batch)
            .with_for_update(skip_locked=True)
        )
        return [
            _Row(
                id=r[0],
                envelope=Envelope(headers=dict(r[6]), body=bytes(r[7]), subject=r[2]),
                qos=QoS(r[3]),
                transport=r[4],
                key=r[5],
                created_at=float(r[8]),
            )
            for r in result.all()
        ]

    async def _unsent_of_keys(
        self, session: AsyncConnection, rows: Sequence[_Row]
    ) -> list[tuple[int, str]]:
        keys = sorted({row.key for row in rows if row.key is not None})
        if not keys:
            return []
        result = await session.execute(
            select(outbox.c.id, outbox.c.ordering_key)
            .where(
                outbox.c.sent_at.is_(None),
                outbox.c.dead_at.is_(None),
                outbox.c.ordering_key.in_(keys),
                outbox.c.id <= rows[-1].id,
            )
            .order_by(outbox.c.id)
        )
        return [(r[0], r[1]) for r in result.all()]

    async def _publish_run(self, run: list[_Row]) -> _RunOutcome:
        """Publish `run` in order; stop at the first failure the broker may not repeat. A row
        it refuses as it is (too large) is set aside, and the run goes on past it."""
        outcome = _RunOutcome()
        for row in run:
            try:
                await self._publish_row(row)
            except MessageTooLargeError as exc:
                outcome.dead.append((row, _describe(exc)))
                continue
            except Exception as exc:
                outcome.failed, outcome.error = row, _describe(exc)
                return outcome
            outcome.sent.append(row)
        return outcome

    async def _publish_row(self, row: _Row) -> None:
        failpoints.reached("relay.before_publish")
        token = context.attach(propagate.extract(row.envelope.headers))
        try:
            await self._publish(row.envelope, row.qos, row.transport)
        finally:
            context.detach(token)
        relay_duration.record(max(0.0, time.time() - row.created_at), {"qos": int(row.qos)})

    async def _housekeeping(self) -> None:
        now = time.monotonic()
        if now - self._levels_at >= LEVELS_EVERY:
            self._levels_at = now
            await self.read_levels()
        if now - self._pruned_at >= PRUNE_EVERY:
            self._pruned_at = now
            await self.prune()

    async def read_levels(self) -> tuple[int, float]:
        """Backlog and the oldest unsent row's age (dead rows aside), and the dead rows, read
        into the metrics."""
        waiting = outbox.c.dead_at.is_(None)
        oldest = func.min(outbox.c.created_at).filter(waiting)
        async with self._database.engine.connect() as session:
            row = (
                await session.execute(
                    select(
                        func.count().filter(waiting),
                        func.coalesce(func.extract("epoch", func.now() - oldest), 0),
                        func.count().filter(outbox.c.dead_at.isnot(None)),
                    ).where(outbox.c.sent_at.is_(None))
                )
            ).one()
        outbox_levels.backlog, outbox_levels.oldest_seconds = int(row[0]), float(row[1])
        outbox_levels.dead = int(row[2])
        return outbox_levels.backlog, outbox_levels.oldest_seconds

    async def prune(self) -> None:
        """Delete sent rows older than APP_OUTBOX_RETENTION, inbox ids older than
        APP_INBOX_RETENTION and HTTP keys older than APP_IDEMPOTENCY_TTL."""
        async with self._database.engine.begin() as session:
            await session.execute(
                delete(outbox).where(
                    outbox.c.sent_at.isnot(None), outbox.c.sent_at < func.now() - self._retention
                )
            )
            await session.execute(
                delete(inbox).where(inbox.c.handled_at < func.now() - self._inbox_retention)
            )
            await session.execute(
                delete(http_keys).where(http_keys.c.created_at < func.now() - self._keys_ttl)
            )

    async def _listen(self) -> None:
        if self._listener is not None and not self._listener.is_closed():
            return
        self._listener = await asyncpg.connect(asyncpg_url(self._database.url), timeout=5)
        await self._listener.add_listener(CHANNEL, self._notified)
        self._wake.set()  # what was committed while no one listened

    def _notified(self, *_args: object) -> None:
        self._wake.set()

    async def _unlisten(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(listener.close(), 1)
            if not listener.is_closed():
                listener.terminate()


class RelayError(QosMeshError):
    """Outbox rows the broker did not confirm this round; they stay unsent and are retried."""


def _describe(exc: BaseException) -> str:
    text_ = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text_}" if text_ else type(exc).__name__
