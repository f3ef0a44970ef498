"""What one running instance is made of, in one typed container: `app.state.services`.

The lifespan (app/main.py) fills it in as the parts start. Endpoints take the parts as FastAPI
dependencies (app/api/deps.py), never from `app.state` by name. The broker-bound parts (bus,
discovery, peers, dead letters, the domain's state) are whatever the rebuilder holds at that
moment, so a request after a rebuild gets the new ones. While there are none (the brokers
cannot be reached yet, or the parts are being built again) they raise BrokerUnavailableError,
which the API answers with 503 and Retry-After.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI

from app.errors import BrokerUnavailableError
from app.settings import Settings
from app.supervision import Supervision

if TYPE_CHECKING:
    from app.brokers import Brokers
    from app.bus import Bus
    from app.database.connection import Database
    from app.discovery import Discovery
    from app.instance.lifecycle import Drain
    from app.instance.readiness import Readiness
    from app.instance.runtime import Rebuilder, Runtime
    from app.peers import PeerClient
    from app.qos.dead_letters import DeadLetters


@dataclass(slots=True, eq=False)
class Services:
    settings: Settings
    supervision: Supervision | None = None  # set as the lifespan begins
    rebuilder: Rebuilder | None = None
    readiness: Readiness | None = None  # set once the first runtime is up
    drain: Drain | None = None
    database: Database | None = None  # when the domain or APP_DATABASE_URL asks for one

    @property
    def runtime(self) -> Runtime:
        """The current broker-bound parts; BrokerUnavailableError while there are none."""
        runtime = self.rebuilder.current if self.rebuilder is not None else None
        if runtime is None:
            raise BrokerUnavailableError("the brokers are not connected yet")
        return runtime

    @property
    def brokers(self) -> Brokers:
        return self.runtime.brokers

    @property
    def bus(self) -> Bus:
        return self.runtime.bus

    @property
    def discovery(self) -> Discovery:
        return self.runtime.discovery

    @property
    def peers(self) -> PeerClient:
        return self.runtime.peers

    @property
    def dead_letters(self) -> DeadLetters:
        return self.runtime.dead_letters

    @property
    def domain(self) -> Any:
        """What the domain's `setup` returned (the example's `Example`); its own provider
        gives it its type."""
        return self.runtime.domain


def services_of(app: FastAPI) -> Services:
    """The services of an app made by `create_app`."""
    services: Services = app.state.services
    return services
