"""The parts of the instance, as FastAPI dependencies an endpoint declares by type.

    async def place(bus: BusDep, ...) -> ...

Each provider reads `Services` (app/services.py); a broker-bound part that is not there (the
brokers are not reachable yet, or the parts are being built again) answers 503 with
Retry-After. Providers are async so FastAPI calls them on the event loop, not in its thread pool.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.brokers import Brokers
from app.bus import Bus
from app.dead_letters import DeadLetters
from app.discovery import Discovery
from app.errors import BrokerUnavailableError
from app.peers import PeerClient
from app.services import Services
from app.settings import Settings


async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


async def get_settings(services: ServicesDep) -> Settings:
    return services.settings


async def get_brokers(services: ServicesDep) -> Brokers:
    return services.brokers


async def get_bus(services: ServicesDep) -> Bus:
    return services.bus


async def get_discovery(services: ServicesDep) -> Discovery:
    return services.discovery


async def get_peers(services: ServicesDep) -> PeerClient:
    return services.peers


async def get_dead_letters(services: ServicesDep) -> DeadLetters:
    return services.dead_letters


SettingsDep = Annotated[Settings, Depends(get_settings)]
BrokersDep = Annotated[Brokers, Depends(get_brokers)]
BusDep = Annotated[Bus, Depends(get_bus)]
DiscoveryDep = Annotated[Discovery, Depends(get_discovery)]
PeersDep = Annotated[PeerClient, Depends(get_peers)]
DeadLettersDep = Annotated[DeadLetters, Depends(get_dead_letters)]


async def broker_available(brokers: BrokersDep) -> None:
    """Refuse a command at once (503) while NATS is disconnected, instead of letting requests
    wait out their publish budgets and pile up."""
    if not brokers.nc.is_connected:
        raise BrokerUnavailableError("NATS is disconnected")
