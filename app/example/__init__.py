"""The example domain: orders (QoS 1) and payments (QoS 2), end to end.

Copy its pattern; delete this package and tests/example/ together to drop it. The service
finds it through `router` and `setup` (see app/main.py).
"""

from __future__ import annotations

from app.api.idempotency_keys import IdempotencyKeys
from app.brokers import Brokers
from app.bus import Bus
from app.example import handlers
from app.example.api import router
from app.example.orders import OrderStore
from app.example.state import Example
from app.settings import Settings


async def setup(bus: Bus, brokers: Brokers, settings: Settings) -> Example:
    """Open the read model and key store, and register the handlers (before the bus starts)."""
    orders = await OrderStore.open(brokers.nc, brokers.js, settings)
    keys = await IdempotencyKeys.open(brokers.nc, brokers.js, settings)
    handlers.register(bus, orders)
    return Example(orders=orders, keys=keys)


__all__ = ["Example", "router", "setup"]
