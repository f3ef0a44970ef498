"""The example domain: orders (QoS 1) and payments (QoS 2), end to end, kept in PostgreSQL.

A command writes its row and its event's outbox row in one transaction; the handlers apply
each event once through the inbox (docs/outbox.md). With APP_EXAMPLE_PAYMENT_TIMEOUT, an order
left unpaid is cancelled by a delayed message (docs/coordination.md). Copy its pattern; delete
this package and tests/example/ together to drop it. The service finds it through `router`,
`setup`, `USES_DATABASE` and `MIGRATIONS` (see app/main.py).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from app.brokers import Brokers
from app.bus import Bus
from app.errors import ConfigurationError
from app.example import handlers
from app.example.api import router
from app.example.messages import OrderPlaced, PaymentCaptured, PaymentDue
from app.example.settings import load
from app.example.state import Example
from app.example.stats import singletons
from app.settings import Settings

USES_DATABASE = True
MIGRATIONS = Path(__file__).parent / "migrations"


async def setup(bus: Bus, brokers: Brokers, settings: Settings) -> Example:
    """Register the handlers (before the bus starts)."""
    if bus.database is None:
        raise ConfigurationError("the example keeps its orders in the database")
    timeout = load().payment_timeout
    keeps = bus.max_delay(PaymentDue)
    if timeout is not None and keeps is not None and timeout > keeps:
        # Every order would write a PaymentDue its scheduler refuses: refused here, once.
        raise ConfigurationError(
            f"APP_EXAMPLE_PAYMENT_TIMEOUT={timeout:g} is longer than the {keeps:g} s the "
            "scheduler of PaymentDue keeps (the stream's max age less an hour on the server's "
            "schedules): shorten it, or use APP_SCHEDULER=fallback or Redis"
        )
    handlers.register(bus)
    bus.publishes(OrderPlaced, PaymentCaptured, PaymentDue)
    due = timedelta(seconds=timeout) if timeout is not None else None
    return Example(database=bus.database, bus=bus, payment_timeout=due)


__all__ = ["MIGRATIONS", "USES_DATABASE", "Example", "router", "setup", "singletons"]
