"""The QoS router: one publish API and one subscribe API over every transport.

A message's QoS comes from its type (or APP_QOS_OVERRIDES); the QoS picks the transport
configured for that level. Handlers are registered per message type; by default the instances
of a service compete for each message, `broadcast=True` gives every instance every message.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from app.bus.dispatch import dispatcher, in_transaction
from app.bus.handler_deadlines import HandlerDeadlines
from app.errors import (
    ConfigurationError,
    InvalidMessageError,
    MessageTooLargeError,
    PublishError,
)
from app.messages import (
    H_DELIVER_AT,
    Envelope,
    Message,
    QoS,
    due_of,
    due_text,
    encode,
    snake_case,
)
from app.observability.instruments import handler_timeouts, publish_duration, record_zeros
from app.observability.spans import sending_traced
from app.qos.claims import ClaimStore, HeldClaims
from app.qos.dead_letters import DeadLetterStore
from app.qos.retries import publish_concurrently
from app.settings import Settings
from app.transports.base import (
    BatchPublisher,
    Delivery,
    Schedules,
    Subscription,
    Transport,
)
from app.transports.registry import SPECS, spec_of

if TYPE_CHECKING:
    from app.database.connection import Database, Transaction

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)
MessageHandler = Callable[[M], Awaitable[None]]


class Bus:
    def __init__(
        self,
        settings: Settings,
        transports: Mapping[str, Transport],
        claim_stores: Mapping[str, ClaimStore],
        instance_id: str,
        database: Database | None = None,
    ) -> None:
        self._settings = settings
        self._database = database
        self._transports = dict(transports)
        self._claim_stores = claim_stores
        self._instance_id = instance_id
        self._subscriptions: list[tuple[Transport, Subscription]] = []
        self._started = False
        self._stopped = False
        self._claims = HeldClaims()
        self._renewing: asyncio.Task[None] | None = None
        self._deadlines = HandlerDeadlines()
        self._cutting: asyncio.Task[None] | None = None
        # Per message type: the QoS, transport and subject (settings are fixed for a bus).
        self._routes: dict[type[Message], tuple[QoS, Transport, str]] = {}
        self._published: list[type[Message]] = []
        self._handled: list[tuple[type[Message], Subscription]] = []

    @property
    def database(self) -> Database | None:
        """The database the outbox and the inbox live in, when the service has one."""
        return self._database

    def route(self, message_type: type[Message]) -> tuple[QoS, Transport]:
        """The QoS and transport for `message_type`, overrides applied."""
        override = self._settings.qos_overrides.get(message_type.type_name())
        qos = QoS(override.qos) if override and override.qos is not None else message_type.qos
        levels = {
            QoS.AT_MOST_ONCE: self._settings.qos0_transport,
            QoS.AT_LEAST_ONCE: self._settings.qos1_transport,
            QoS.EXACTLY_ONCE: self._settings.qos2_transport,
        }
        name = override.transport if override and override.transport else levels[qos]
        if qos > QoS.AT_MOST_ONCE and not spec_of(name).reliable:
            reliable = ", ".join(sorted(n for n, spec in SPECS.items() if spec.reliable))
            raise ConfigurationError(
                f"{message_type.type_name()} is QoS {int(qos)} but transport {name!r} has no "
                f"persistence, ack or retry: use one of {reliable}"
            )
        transport = self._transports.get(name)
        if transport is None:
            raise ConfigurationError(f"transport {name!r} is not available")
        return qos, transport

    def publishes(self, *message_types: type[Message]) -> None:
        """Declare the types this service publishes: their routes are checked now, and the
        AsyncAPI document (`/asyncapi.json`) lists them as operations it sends."""
        for message_type in message_types:
            self._route_of(message_type)
            if message_type not in self._published:
                self._published.append(message_type)

    @property
    def message_types(self) -> tuple[list[type[Message]], list[tuple[type[Message], Subscription]]]:
        """The types declared with `publishes`, and each handled type with its subscription."""
        return list(self._published), list(self._handled)

    def subject(self, message_type: type[Message]) -> str:
        return message_type.subject_for(self._settings.service_name)

    def _route_of(self, message_type: type[Message]) -> tuple[QoS, Transport, str]:
        known = self._routes.get(message_type)
        if known is None:
            qos, transport = self.route(message_type)
            known = self._routes[message_type] = (qos, transport, self.subject(message_type))
        return known

    async def publish(
        self,
        message: Message,
        *,
        session: Transaction | None = None,
        ordering_key: str | None = None,
        delay: timedelta | None = None,
        at: datetime | None = None,
    ) -> None:
        """Publish as the type's QoS demands; QoS 1+ raises PublishError when unconfirmed.

        With `delay` or `at` (QoS 1 and 2), the broker keeps the message and delivers it when
        it is due, no earlier; `cancel` takes it back before then.

        With `session`, the message goes into the transactional outbox in that session's
        transaction instead (app/database/outbox.py): it reaches the broker if and only if the
        transaction commits, published by the relay (delayed as asked). Messages with the same
        `ordering_key` are published in commit order."""
        due = await self._due(message, delay, at)
        if session is not None:
            await self._into_outbox(message, session, ordering_key, due)
            return
        qos, transport, subject = self._route_of(type(message))
        envelope = encode(message, qos, subject)
        if due is None:
            await _timed(transport, envelope, qos)
            return
        schedules = self._schedules_of(transport, qos, message.type_name())
        envelope.headers[H_DELIVER_AT] = due_text(due)
        await schedules.schedule(envelope, qos, due)

    async def _due(
        self, message: Message, delay: timedelta | None, at: datetime | None
    ) -> datetime | None:
        """When a message asked to be delayed is due (None: at once); a delay counts from the
        broker's time, not this host's."""
        if delay is not None and at is not None:
            raise ValueError("publish takes delay or at, not both")
        if at is not None and at.tzinfo is None:
            raise ValueError("at must be timezone-aware (datetime.now(UTC) + ...)")
        if delay is None:
            return at
        qos, transport, _ = self._route_of(type(message))
        return await self._schedules_of(transport, qos, message.type_name()).now() + delay

    async def cancel(self, message_type: type[Message], message_id: str) -> bool:
        """Take back a delayed message of `message_type` that has not fired yet: True only when
        it can no longer fire. That is when its outbox row was never handed to the broker (and
        is now deleted), or when the broker confirms it removed the message before its time.
        False once it fired, for an unknown id, and whenever that cannot be known."""
        qos, transport, subject = self._route_of(message_type)
        schedules = self._schedules_of(transport, qos, message_type.type_name())
        if self._database is not None and await self._withdraw(subject, message_id):
            return True  # still in the outbox, never handed to the broker: now it never will be
        return await schedules.cancel(subject, message_id)

    def max_delay(self, message_type: type[Message]) -> float | None:
        """The longest delay, in seconds, the scheduler of `message_type` keeps (None: any);
        ConfigurationError when the type cannot be delayed."""
        qos, transport, _ = self._route_of(message_type)
        return self._schedules_of(transport, qos, message_type.type_name()).max_delay

    def _schedules_of(self, transport: Transport, qos: QoS, type_name: str) -> Schedules:
        if qos == QoS.AT_MOST_ONCE:
            raise ConfigurationError(f"{type_name} is QoS 0: only QoS 1 and 2 can be delayed")
        if transport.schedules is None:
            raise ConfigurationError(f"transport {transport.name!r} cannot delay messages")
        return transport.schedules

    async def _into_outbox(
        self,
        message: Message,
        session: Transaction,
        ordering_key: str | None,
        due: datetime | None,
    ) -> None:
        if self._database is None:
            raise ConfigurationError("publish(session=...) needs the database")
        qos, transport, subject = self._route_of(type(message))
        if qos == QoS.AT_MOST_ONCE:
            raise ConfigurationError(
                f"{message.type_name()} is QoS 0: the outbox is for QoS 1 and 2 messages"
            )
        envelope = encode(message, qos, subject)
        if due is not None:  # the relay schedules it: the header says when
            # Refused in the caller's transaction, as below: the relay could never send it.
            schedules = self._schedules_of(transport, qos, message.type_name())
            keeps = schedules.max_delay
            # Judged by the clock the delay was counted from: the broker's.
            if keeps is not None and (due - await schedules.now()).total_seconds() > keeps:
                raise InvalidMessageError(
                    f"{message.type_name()}: a delay beyond {keeps / 86400:g} days is more than "
                    f"the scheduler of transport {transport.name!r} keeps"
                )
            envelope.headers[H_DELIVER_AT] = due_text(due)
        limit = self._settings.max_message_bytes
        if len(envelope.body) > limit:
            # Refused in the caller's transaction: in the outbox it could never be published,
            # and it would hold up the messages of its key behind it.
            raise MessageTooLargeError(
                f"{message.type_name()} body of {len(envelope.body)} bytes exceeds "
                f"APP_MAX_MESSAGE_BYTES ({limit})"
            )
        from app.database import outbox

        await outbox.add(session, envelope, qos, transport.name, ordering_key)

    async def _withdraw(self, subject: str, message_id: str) -> bool:
        """Whether the message's outbox row was never handed to the broker and is now deleted.
        A row a relay claimed is deleted too (no relay sends it again), but only the broker can
        tell whether the message can still fire."""
        from app.database import outbox

        assert self._database is not None
        found = await outbox.withdraw(self._database, subject, message_id)
        return found is outbox.Withdrawal.WITHDRAWN

    async def relay(self, envelope: Envelope, qos: QoS, transport_name: str) -> None:
        """Publish an envelope the outbox kept, through the transport it was routed to."""
        transport = self._transports.get(transport_name)
        if transport is None:
            raise ConfigurationError(f"transport {transport_name!r} is not available")
        due = due_of(envelope.headers)
        if due is None:
            await _timed(transport, envelope, qos)
            return
        await self._schedules_of(transport, qos, envelope.type_name).schedule(envelope, qos, due)

    async def publish_many(self, messages: Iterable[Message], *, window: int = 256) -> None:
        """Publish every message as its QoS demands, up to `window` of them awaiting their
        broker ack at once; return when all are as safe as `publish` would have made them.

        What `asyncio.gather` of `publish` calls under a semaphore does, for a fraction of the
        cost on JetStream. Every message is tried; PublishError is raised afterwards when any
        QoS 1+ message was not confirmed (the others were)."""
        batches: dict[tuple[QoS, Transport], list[Envelope]] = {}
        for message in messages:
            qos, transport, subject = self._route_of(type(message))
            batches.setdefault((qos, transport), []).append(encode(message, qos, subject))
        errors: list[PublishError] = []
        for (qos, transport), envelopes in batches.items():
            publish = transport.publish
            # Traced, every message needs its own span: the one-by-one path opens them.
            if isinstance(transport, BatchPublisher) and not sending_traced():
                envelopes = await transport.first_attempts(envelopes, qos, window)
                publish = transport.publish_rest
            try:
                # The rest, or what the first attempts did not confirm, with retries and backoff.
                await publish_concurrently(publish, envelopes, qos, window)
            except PublishError as exc:
                errors.append(exc)
        if errors:
            raise PublishError("; ".join(map(str, errors))) from errors[0]

    def handler(
        self,
        message_type: type[M],
        *,
        broadcast: bool = False,
        timeout: float | None = None,
        transactional: bool = False,
    ) -> Callable[[Callable[..., Awaitable[None]]], Callable[..., Awaitable[None]]]:
        """Decorator form of `subscribe`."""

        def register(func: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
            self.subscribe(
                message_type,
                func,
                broadcast=broadcast,
                timeout=timeout,
                transactional=transactional,
            )
            return func

        return register

    def subscribe(
        self,
        message_type: type[M],
        handler: Callable[..., Awaitable[None]],
        *,
        broadcast: bool = False,
        timeout: float | None = None,
        transactional: bool = False,
    ) -> None:
        """Handle every `message_type` this service receives with `handler(message)`.

        A handler still running after `timeout` seconds (default APP_HANDLER_TIMEOUT) is
        cancelled, and its delivery fails with HandlerTimeoutError: tried again later, or
        dead-lettered on its last delivery.

        `transactional=True`: `handler(message, session)` runs in a database transaction that
        also records the message id in the inbox (app/database/inbox.py), so its database
        effects are applied once per message id, at QoS 1 and 2; a redelivery is acked without
        running it."""
        if self._started:
            raise ConfigurationError("subscribe before the bus starts")
        qos, transport = self.route(message_type)
        service = self._settings.service_name
        name = f"{service}__{snake_case(message_type.type_name())}"
        if broadcast:
            name = f"{name}__{self._instance_id}"
        types: dict[str, type[Message]] = {message_type.type_name(): message_type}
        # The deadline bounds the handler's own run, not the claim, inbox commit or ack around it.
        handler = self._bounded(handler, timeout, name, transport.name, self.subject(message_type))
        run = in_transaction(self._database, handler, name, qos) if transactional else handler
        on_delivery = self._dispatcher(types, run, qos, name, transport.name, transactional)
        subscription = Subscription(
            subject=self.subject(message_type),
            group=None if broadcast else service,
            handler=on_delivery,
            qos=qos,
            name=name,
        )
        self._subscriptions.append((transport, subscription))
        self._handled.append((message_type, subscription))

    def _bounded(
        self,
        handler: Callable[..., Awaitable[None]],
        timeout: float | None,
        consumer: str,
        transport: str,
        subject: str,
    ) -> Callable[..., Awaitable[None]]:
        seconds = self._settings.handler_timeout if timeout is None else timeout
        attributes = {"messaging.system": spec_of(transport).system, "destination": subject}
        timeouts = handler_timeouts.series(attributes)
        return self._deadlines.bounded(handler, seconds, consumer, timeouts)

    def _dispatcher(
        self,
        types: dict[str, type[Message]],
        handler: Callable[[Any], Awaitable[bool | None]],
        qos: QoS,
        consumer: str,
        transport: str,
        inbox: bool = False,
    ) -> Callable[[Envelope, Delivery], Awaitable[bool]]:
        # The inbox applies a transactional handler once: a QoS 2 claim would add nothing.
        claims = None if inbox else self._claim_stores.get(transport)
        if qos == QoS.EXACTLY_ONCE and claims is None and not inbox:
            raise ConfigurationError(f"transport {transport!r} has no claim store for QoS 2")
        return dispatcher(
            types,
            handler,
            qos,
            consumer,
            system=spec_of(transport).system,
            claims=None if qos < QoS.EXACTLY_ONCE else claims,
            held=self._claims,
            # A claim is stale once a delivery of its message could be handed to another consumer.
            stale_after=spec_of(transport).redelivery_after(self._settings),
            max_bytes=self._settings.max_message_bytes,
        )

    async def start(self) -> None:
        for transport, subscription in self._subscriptions:
            await transport.subscribe(subscription)
        for transport in self._transports.values():
            await transport.start()
        self._started = True
        self._renewing = asyncio.create_task(self._claims.renew(), name="renew claims")
        self._cutting = asyncio.create_task(self._deadlines.sweep(), name="handler deadlines")
        record_zeros(
            (spec_of(transport.name).system, sub.subject, int(sub.qos))
            for transport, sub in self._subscriptions
        )

    async def stop(self, timeout: float) -> None:
        """Stop consuming; in-flight handlers get `timeout` seconds, the rest are redelivered.
        Publishing keeps working (in-flight requests may still publish). Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        await asyncio.gather(*(t.stop(timeout) for t in self._transports.values()))
        if self._renewing is not None:
            self._renewing.cancel()
        if self._cutting is not None:
            self._cutting.cancel()

    @property
    def consumers(self) -> list[tuple[str, Subscription]]:
        """(transport name, subscription) of every handler registered."""
        return [(transport.name, sub) for transport, sub in self._subscriptions]

    @property
    def dead_letters(self) -> list[DeadLetterStore]:
        stores = (transport.dead_letters for transport in self._transports.values())
        return [store for store in stores if store is not None]


async def _timed(transport: Transport, envelope: Envelope, qos: QoS) -> None:
    """Publish, and record how long it took to be confirmed (`qosmesh.publish.duration`)."""
    started = time.perf_counter()
    await transport.publish(envelope, qos)
    publish_duration.record(
        time.perf_counter() - started, {"transport": transport.name, "qos": int(qos)}
    )
