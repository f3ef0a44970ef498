"""Dependencies shared by command endpoints."""

from __future__ import annotations

from fastapi import Request

from app.errors import BrokerUnavailableError


async def broker_available(request: Request) -> None:
    """Refuse a command at once (503) while NATS is disconnected, instead of letting requests
    wait out their publish budgets and pile up. (Async so FastAPI runs it on the event loop,
    not through its thread pool.)"""
    brokers = getattr(request.app.state, "brokers", None)
    if brokers is None or not brokers.nc.is_connected:
        raise BrokerUnavailableError("NATS is disconnected")
