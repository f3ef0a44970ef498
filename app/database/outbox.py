"""The transactional outbox: a message published with a session is a row written in the
caller's transaction, so it reaches the broker if and only if that transaction commits.

A relay in every instance publishes committed rows with their message id as the broker's
dedupe id (`Nats-Msg-Id`; the Redis dedupe key for QoS 2), then marks them sent. Rows sharing
an ordering key are published in commit order:

- Writing: a row with a key is inserted under a transaction-scoped advisory lock on that key,
  so two transactions writing the same key commit one after the other, and the later one's row
  has the higher id. Id order is commit order, within a key.
- Relaying: a relay locks a batch of due rows with `FOR UPDATE SKIP LOCKED` and may publish a
  keyed row only when every unsent row of that key before it is in its own batch, in order. A
  row of the key that another relay holds, or that waits for its next attempt, stops the key
  there. One key's rows go out one after the other, each after the broker acked the one before.

A round holds its batch's row locks from the moment it takes them until it marks each row sent,
dead or due again, so a relay that dies frees its rows at once. Before it publishes, it lists
the rows it is about to hand to the broker in `qosmesh_outbox_handed`, in a transaction of its
own that commits first: the durable mark that a row may have reached the broker even if its
`sent_at` never commits. A cancel (`withdraw`) trusts an unsent row only if it was never handed.

A row whose publish fails is retried on its own schedule (`not_before`, backing off up to
`RETRY_CAP`); rows of other keys go on, and later rows of its key wait for it. A broker away or
a full stream fails every row for a while, and none dies for it. Only a definite refusal sets a
row aside as dead, with its reason: `InvalidMessageError` (a message the broker or the code
refuses as it is: a stream's limit, a delay no scheduler keeps) and `MessageTooLargeError`, or a
route this service can no longer take (a QoS 0 type, a transport that cannot delay). Its key
then moves on: a dead row retried later goes out after the later rows of its key. Rows for a
transport this instance does not have are left to the instances that have it (a rolling
deploy). Dead rows are counted by `qosmesh_outbox_dead`, and listed, retried or discarded
through app/database/dead_rows.py.

The relay wakes on LISTEN/NOTIFY and polls once a second for what a lost notification missed,
and for rows whose next attempt has come.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

import asyncpg
from opentelemetry import context, propagate
from sqlalchemy import delete, exists, func, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from app import failpoints
from app.database.connection import Database, Transaction, asyncpg_url
from app.database.metrics import outbox_levels, relay_duration
from app.database.tables import handed, http_keys, inbox, outbox
from app.errors import ConfigurationError, InvalidMessageError, MessageTooLargeError
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
RETRY_FIRST = 0.5
RETRY_CAP = 10.0
"""A failed row's next attempt: RETRY_FIRST seconds after its first failure, doubling up to
RETRY_CAP. The cap bounds how long a row waits after the broker is back."""
REFUSED = (InvalidMessageError, MessageTooLargeError, ConfigurationError)
"""What sets a row aside as dead: the broker or the code refuses the message for good."""

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


class Withdrawal(enum.Enum):
    """What a cancel found of a message in the outbox."""

    WITHDRAWN = "withdrawn"
    """The row was never handed to the broker, and is deleted: the message can never fire."""
    HANDED = "handed"
    """A relay handed the row to the broker, and may not have heard back; the row is deleted so
    no relay publishes it again, and only the broker can tell whether it can still fire."""
    ABSENT = "absent"
    """No unsent row: published already, or never written here."""


async def withdraw(database: Database, subject: str, message_id: str) -> Withdrawal:
    """Take the message's unsent row out of the outbox (a cancel). A row a relay is marking
    right now is waited for."""
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
        row = withdrawn.first()
        if row is None:
            return Withdrawal.ABSENT
        marks = await session.execute(
            delete(handed).where(handed.c.id == row[0]).returning(handed.c.id)
        )
        return Withdrawal.HANDED if marks.first() is not None else Withdrawal.WITHDRAWN


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
    untried: list[_Row] = field(default_factory=list)  # after the failure: not published


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

    def __init__(
        self,
        database: Database,
        publish: Publish,
        settings: Settings,
        transports: Sequence[str] = (),
    ) -> None:
        self._database = database
        self._publish = publish
        self._batch = settings.outbox_batch
        self._transports = sorted(transports)
        self._retention = timedelta(seconds=settings.outbox_retention)
        self._inbox_retention = timedelta(seconds=settings.inbox_retention)
        self._keys_ttl = timedelta(seconds=settings.idempotency_ttl)
        self._wake = asyncio.Event()
        self._listener: asyncpg.Connection | None = None
        self._levels_at = 0.0
        self._pruned_at = 0.0

    async def run(self) -> None:
        """Relay until cancelled. A row that fails waits for its own next attempt; errors of
        the database are logged and retried with backoff. Nothing committed is lost by them."""
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
        """One round: lock up to APP_OUTBOX_BATCH due rows, mark what may go now as handed,
        publish it, and mark each row sent, dead or due again. Whether to go on at once: a full
        batch was taken (more may be waiting), or rows of it wait behind another relay's rows of
        their key (tried again after a short pause)."""
        async with self._database.engine.begin() as session:
            rows = await self._lock_batch(session)
            if not rows:
                return False
            runs = publishable(rows, await self._unsent_of_keys(session, rows))
            chosen = [row.id for run in runs for row in run]
            if chosen:
                await self._hand(chosen)
            outcomes = await asyncio.gather(*(self._publish_run(run) for run in runs))
            await self._settle(session, outcomes)
        if len(chosen) < len(rows):  # held up by another relay's rows of their keys
            await asyncio.sleep(HELD_UP_PAUSE)
            return True
        return len(rows) >= self._batch

    async def _hand(self, ids: list[int]) -> None:
        """Mark the rows as handed to the broker, committed before they are published."""
        async with self._database.engine.begin() as marks:
            await marks.execute(
                pg_insert(handed).values([{"id": i} for i in ids]).on_conflict_do_nothing()
            )

    async def _settle(self, session: AsyncConnection, outcomes: Sequence[_RunOutcome]) -> None:
        sent = [row.id for outcome in outcomes for row in outcome.sent]
        untried = [row.id for outcome in outcomes for row in outcome.untried]
        if sent:
            await session.execute(
                update(outbox)
                .where(outbox.c.id.in_(sent))
                .values(sent_at=func.clock_timestamp(), attempts=outbox.c.attempts + 1)
            )
        if sent or untried:  # sent ones are known; untried ones never left
            await session.execute(delete(handed).where(handed.c.id.in_(sent + untried)))
        for outcome in outcomes:
            for row, error in outcome.dead:
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
            if outcome.failed is not None:
                await self._retry_later(session, outcome.failed, outcome.error)

    async def _retry_later(self, session: AsyncConnection, row: _Row, error: str) -> None:
        attempts = (
            await session.execute(
                update(outbox)
                .where(outbox.c.id == row.id)
                .values(attempts=outbox.c.attempts + 1, last_error=error[:500])
                .returning(outbox.c.attempts)
            )
        ).scalar_one()
        pause = min(RETRY_CAP, RETRY_FIRST * 2 ** max(0, attempts - 1))
        await session.execute(
            update(outbox)
            .where(outbox.c.id == row.id)
            .values(not_before=func.clock_timestamp() + timedelta(seconds=pause))
        )
        log.warning(
            "outbox row %d (message %s to %s) not confirmed (attempt %d), again in %.1fs: %s",
            *(row.id, row.envelope.message_id, row.envelope.subject, attempts, pause, error),
        )

    async def _lock_batch(self, session: AsyncConnection) -> list[_Row]:
        now = func.clock_timestamp()
        earlier = outbox.alias("earlier")
        query = (
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
            .where(
                outbox.c.sent_at.is_(None),
                outbox.c.dead_at.is_(None),
                or_(outbox.c.not_before.is_(None), outbox.c.not_before <= now),
                # Not behind a row of its key that waits for its next attempt: such rows would
                # fill the batch and hold up every key after them.
                ~exists().where(
                    earlier.c.ordering_key == outbox.c.ordering_key,
                    earlier.c.id < outbox.c.id,
                    earlier.c.sent_at.is_(None),
                    earlier.c.dead_at.is_(None),
                    earlier.c.not_before > now,
                ),
            )
            .order_by(outbox.c.id)
            .limit(self._batch)
            .with_for_update(of=outbox, skip_locked=True)
        )
        if self._transports:
            query = query.where(outbox.c.transport.in_(self._transports))
        result = await session.execute(query)
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
        """Publish `run` in order; stop at the first failure the broker may not repeat (the
        rest of the run waits for that row). A row refused for good is set aside, and the run
        goes on past it."""
        outcome = _RunOutcome()
        for index, row in enumerate(run):
            try:
                await self._publish_row(row)
            except REFUSED as exc:
                outcome.dead.append((row, _describe(exc)))
                continue
            except Exception as exc:
                outcome.failed, outcome.error = row, _describe(exc)
                outcome.untried = run[index + 1 :]
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
        failpoints.reached("relay.after_publish")
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
        """Backlog and the oldest unsent row's age (dead rows aside), the dead rows, and the
        rows waiting for their next attempt, read into the metrics. The backlog is what
        APP_OUTBOX_MAX_BACKLOG limits: a broker away grows it, a dead row does not."""
        waiting = outbox.c.dead_at.is_(None)
        oldest = func.min(outbox.c.created_at).filter(waiting)
        retrying = waiting & (outbox.c.not_before > func.now())
        async with self._database.engine.connect() as session:
            row = (
                await session.execute(
                    select(
                        func.count().filter(waiting),
                        func.coalesce(func.extract("epoch", func.now() - oldest), 0),
                        func.count().filter(outbox.c.dead_at.isnot(None)),
                        func.count().filter(retrying),
                    ).where(outbox.c.sent_at.is_(None))
                )
            ).one()
        outbox_levels.backlog, outbox_levels.oldest_seconds = int(row[0]), float(row[1])
        outbox_levels.dead, outbox_levels.retrying = int(row[2]), int(row[3])
        return outbox_levels.backlog, outbox_levels.oldest_seconds

    async def prune(self) -> None:
        """Delete sent rows older than APP_OUTBOX_RETENTION, inbox ids older than
        APP_INBOX_RETENTION, HTTP keys older than APP_IDEMPOTENCY_TTL, and the handed marks of
        rows no longer waiting (sent by another relay after a crash)."""
        async with self._database.engine.begin() as session:
            waiting = select(outbox.c.id).where(
                outbox.c.id == handed.c.id, outbox.c.sent_at.is_(None)
            )
            await session.execute(delete(handed).where(~waiting.exists()))
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


def _describe(exc: BaseException) -> str:
    text_ = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text_}" if text_ else type(exc).__name__
