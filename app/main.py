"""The FastAPI application factory and its lifespan: brokers up, components started, and all
of it stopped in reverse order on shutdown."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from fastapi import FastAPI

from app import __version__
from app.api import health, nodes
from app.api.health import Readiness
from app.brokers import open_brokers
from app.discovery import open_discovery
from app.settings import Settings

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the service. `settings` defaults to the environment (APP_* variables)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            readiness = Readiness()
            brokers = await stack.enter_async_context(open_brokers(settings))
            readiness.add(brokers.readiness)
            app.state.brokers = brokers
            # Entered after the brokers, so it leaves the bucket before they close.
            discovery = await stack.enter_async_context(open_discovery(brokers, settings))
            readiness.add(discovery.readiness)
            app.state.discovery = discovery
            app.state.readiness = readiness
            log.info("service started", extra={"service": settings.service_name})
            yield
            readiness.draining = True
            log.info("service stopping", extra={"service": settings.service_name})

    app = FastAPI(title=settings.service_name, version=__version__, lifespan=lifespan)
    app.state.settings = settings
    app.include_router(health.router)
    app.include_router(nodes.router)
    return app


def __getattr__(name: str) -> Any:
    """`uvicorn app.main:app` builds the app from the environment when it is first asked for."""
    if name == "app":
        return create_app()
    raise AttributeError(name)
