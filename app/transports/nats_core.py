"""QoS 0 on NATS core: fire and forget, loss allowed and counted.

While the client is disconnected a publish is dropped and counted as lost, rather than left in
nats-py's reconnect buffer where its fate could never be known.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscription

from app.brokers import nats_wire
from app.brokers.permissions import Permissions, publishing, subscribing
from app.errors import MessageTooLargeError
from app.messages import Envelope, QoS
from app.observability.instruments import consumed_series, process_duration, qos0_lost, sent_series
from app.observability.spans import send_span, sending_traced
from app.settings import Settings
from app.transports.base import Delivery, Subscription
from app.transports.spec import Built, Channel, TransportSpec

if TYPE_CHECKING:
    from app.brokers import Brokers

log = logging.getLogger(__name__)

SYSTEM = "nats"


class NatsCoreTransport:
    name = "nats"

    def __init__(self, nc: NatsClient) -> None:
        self._nc = nc
        self._subscriptions: list[Subscription] = []
        self._active: list[NatsSubscription] = []

    @property
    def dead_letters(self) -> None:
        return None

    @property
    def schedules(self) -> None:
        return None  # QoS 0 only: a delayed message is kept, so it is QoS 1 at least

    async def start(self) -> None:
        for subscription in self._subscriptions:
            await self._listen(subscription)

    async def publish(self, envelope: Envelope, qos: QoS) -> None:
        if not self._nc.is_connected:
            self._lost(envelope, "disconnected")
            return
        try:
            if sending_traced():
                with send_span(envelope, qos, SYSTEM):
                    await nats_wire.publish(
                        self._nc, envelope.subject, envelope.body, envelope.headers
                    )
            else:  # no span to open: skip the context manager on the hottest path
                await nats_wire.publish(self._nc, envelope.subject, envelope.body, envelope.headers)
        except MessageTooLargeError:
            self._lost(envelope, "too_large")
            raise  # the caller's to fix, not a loss to shrug off
        except Exception as exc:
            self._lost(envelope, type(exc).__name__)
            return
        sent_series(SYSTEM, envelope.subject, 0, "ok").add()

    def _lost(self, envelope: Envelope, why: str) -> None:
        qos0_lost.add(1, {"messaging.destination.name": envelope.subject})
        sent_series(SYSTEM, envelope.subject, 0, "lost").add()
        log.debug("qos0 message %s dropped: %s", envelope.message_id, why)

    async def subscribe(self, subscription: Subscription) -> None:
        self._subscriptions.append(subscription)

    async def _listen(self, subscription: Subscription) -> None:
        attrs: dict[str, str | int] = {
            "messaging.system": SYSTEM,
            "messaging.destination.name": subscription.subject,
            "qos": 0,
        }
        consumed = consumed_series(attrs)
        durations = process_duration.series(attrs)

        async def on_message(msg: Msg) -> None:
            envelope = Envelope(headers=dict(msg.headers or {}), body=msg.data, subject=msg.subject)
            delivery = Delivery(SYSTEM, msg.subject, 1, 1, envelope.message_id)
            started = time.perf_counter()
            outcome = "ack"
            try:
                await subscription.handler(envelope, delivery)
            except Exception:
                outcome = "term"
                log.warning("qos0 handler failed for %s", envelope.message_id, exc_info=True)
            durations.record(time.perf_counter() - started)
            consumed[outcome].add()

        sub = await self._nc.subscribe(
            subscription.subject, queue=subscription.group or "", cb=on_message
        )
        self._active.append(sub)

    async def stop(self, timeout: float) -> None:
        # At most once: a message still queued for a callback may be dropped on the way out.
        for sub in self._active:
            try:
                await sub.unsubscribe()
            except Exception:
                log.debug("unsubscribe from %s failed", sub.subject, exc_info=True)
        self._active.clear()


async def _build(settings: Settings, brokers: Brokers) -> Built:
    return Built(NatsCoreTransport(brokers.nc), None)


def _nats_permissions(settings: Settings, channels: Sequence[Channel]) -> Permissions:
    """Publish what it sends; subscribe to what it receives (every instance, or a queue group)."""
    return publishing(*(c.subject for c in channels if c.sends)) | subscribing(
        *(c.subject for c in channels if c.consumers)
    )


SPEC = TransportSpec(
    "nats",
    "nats",
    reliable=False,
    needs_redis=False,
    build=_build,
    nats_permissions=_nats_permissions,
)
"""NATS core: QoS 0 only, at most once, each loss counted."""
