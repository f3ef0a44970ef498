"""The JetStream transport's descriptor."""

from __future__ import annotations

from typing import TYPE_CHECKING

from app.settings import Settings
from app.transports.jetstream import SYSTEM
from app.transports.jetstream.claims import KvClaimStore
from app.transports.jetstream.permissions import nats_permissions
from app.transports.jetstream.transport import RETRYABLE, JetStreamTransport
from app.transports.spec import Built, TransportSpec

if TYPE_CHECKING:
    from app.brokers import Brokers


async def _build(settings: Settings, brokers: Brokers) -> Built:
    return Built(
        JetStreamTransport(brokers.nc, brokers.js, settings),
        await KvClaimStore.open(brokers.js, settings),
    )


SPEC = TransportSpec(
    "jetstream",
    SYSTEM,
    reliable=True,
    needs_redis=False,
    build=_build,
    transient=RETRYABLE,
    nats_permissions=nats_permissions,
)
