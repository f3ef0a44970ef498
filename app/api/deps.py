"""The parts of the instance, as FastAPI dependencies an endpoint declares by type.

    async def place(bus: BusDep, ...) -> ...

Each provider reads `Services` (app/instance/services.py) straight from the request: a provider that
depends on another costs FastAPI a second resolution on every request. A broker-bound part that
is not there (the brokers are not reachable yet, or the parts are being built again) answers 503
with Retry-After. Providers are async so FastAPI calls them on the event loop, not in its
thread pool.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.brokers import Brokers
from app.bus import Bus
from app.discovery import Discovery
from app.errors import BrokerUnavailableError
from app.instance.services import Services, services_of
from app.peers import PeerClient
from app.qos.dead_letters import DeadLetters
from app.settings import Settings


async def get_services(request: Request) -> Services:
    return services_of(request.app)


ServicesDep = Annotated[Services, Depends(get_services)]


async def get_settings(request: Request) -> Settings:
    return services_of(request.app).settings


async def get_brokers(request: Request) -> Brokers:
    return services_of(request.app).brokers


async def get_bus(request: Request) -> Bus:
    """The bus, for an endpoint that publishes: while NATS is disconnected it answers 503 at
    once, as `broker_available` does, instead of letting requests wait out their budgets."""
    services = services_of(request.app)
    if not services.brokers.nc.is_connected:
        raise BrokerUnavailableError("NATS is disconnected")
    return services.bus


async def get_discovery(request: Request) -> Discovery:
    return services_of(request.app).discovery


async def get_peers(request: Request) -> PeerClient:
    return services_of(request.app).peers


async def get_dead_letters(request: Request) -> DeadLetters:
    return services_of(request.app).dead_letters


SettingsDep = Annotated[Settings, Depends(get_settings)]
BrokersDep = Annotated[Brokers, Depends(get_brokers)]
BusDep = Annotated[Bus, Depends(get_bus)]
DiscoveryDep = Annotated[Discovery, Depends(get_discovery)]
PeersDep = Annotated[PeerClient, Depends(get_peers)]
DeadLettersDep = Annotated[DeadLetters, Depends(get_dead_letters)]


async def broker_available(request: Request) -> None:
    """Refuse a command at once (503) while NATS is disconnected, instead of letting requests
    wait out their publish budgets and pile up."""
    if not services_of(request.app).brokers.nc.is_connected:
        raise BrokerUnavailableError("NATS is disconnected")
