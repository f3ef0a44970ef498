"""A throwaway transport, added the way a service adds one: a package with its SPEC, and one
`register` call (a transport of qosmesh's own takes one line in app/transports/registry.py).
It keeps messages in the process, as the memory transport does, under a name of its own."""

from __future__ import annotations

from typing import TYPE_CHECKING

from app.qos.claims import MemoryClaimStore
from app.settings import Settings
from app.transports.memory import MemoryTransport
from app.transports.spec import Built, TransportSpec

if TYPE_CHECKING:
    from app.brokers import Brokers


class ThrowawayTransport(MemoryTransport):
    name = "throwaway"


async def _build(settings: Settings, brokers: Brokers) -> Built:
    return Built(ThrowawayTransport(settings), MemoryClaimStore(settings.idempotency_ttl))


SPEC = TransportSpec("throwaway", "throwaway", reliable=True, needs_redis=False, build=_build)
