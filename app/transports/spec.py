"""A transport's descriptor: everything the rest of qosmesh knows about it, in one value.

The router asks it whether the transport may carry QoS 1 and 2 and which messaging system to
name on metrics and spans; the broker set-up asks whether it needs Redis; the registry calls
`build` for the transport and its QoS 2 claim store; `nats-permissions` asks what its channels
need of the service's NATS user. A transport's package declares its `SPEC` and the registry lists
it (docs/architecture.md shows how to add one).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from app.brokers.permissions import Permissions
from app.qos.claims import ClaimStore
from app.settings import Settings
from app.transports.base import Transport

if TYPE_CHECKING:
    from app.brokers import Brokers


class Built(NamedTuple):
    transport: Transport
    claims: ClaimStore | None  # where QoS 2 claims are kept; None when it cannot carry QoS 2


@dataclass(frozen=True, slots=True)
class Channel:
    """One subject of the service as its AsyncAPI document states it: whether the service sends
    on it, and the consumers it receives it with."""

    subject: str
    transport: str
    sends: bool
    consumers: tuple[str | None, ...] = ()
    """Durable consumer (or stream group) names; None for a consumer per instance (broadcast),
    whose name ends with the instance's id."""


def _no_nats(settings: Settings, channels: Sequence[Channel]) -> Permissions:
    return Permissions()


@dataclass(frozen=True, slots=True)
class TransportSpec:
    name: str
    """What APP_QOS<n>_TRANSPORT and APP_QOS_OVERRIDES call it."""
    system: str
    """`messaging.system` on its metrics and spans."""
    reliable: bool
    """Persisted, acknowledged by the broker, redelivered: it may carry QoS 1 and 2."""
    needs_redis: bool
    """It needs the Redis connection (every instance has NATS, for discovery)."""
    build: Callable[[Settings, Brokers], Awaitable[Built]]
    """The transport and its claim store, on the instance's broker connections."""
    transient: tuple[type[BaseException], ...] = ()
    """Its broker's errors that mean "not now": a publish retries them within the budget."""
    redelivery_after: Callable[[Settings], float] = lambda settings: settings.ack_wait
    """Seconds after which a delivery not settled may go to another consumer (a QoS 2 claim
    held that long without renewal is stale): APP_ACK_WAIT unless the broker has its own."""
    nats_permissions: Callable[[Settings, Sequence[Channel]], Permissions] = _no_nats
    """What the service's NATS user needs for the channels routed to it (app/brokers/permissions.py,
    docs/security.md); nothing for a transport that does not use NATS."""
