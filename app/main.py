"""The FastAPI application factory and its lifespan: brokers up, components started, and all
of it stopped in reverse order on shutdown."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from types import ModuleType
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute

from app import __version__
from app.api import (
    admin,
    asyncapi,
    cluster,
    console,
    docs,
    health,
    nodes,
    openapi,
    outbox,
    problems,
)
from app.discovery.models import new_node_id
from app.errors import ConfigurationError, QosMeshError
from app.instance import banner
from app.instance.lifecycle import Drain
from app.instance.readiness import Readiness
from app.instance.relay import relaying, service_database
from app.instance.runtime import Rebuilder
from app.instance.services import Services
from app.logs import start_failed
from app.observability import history
from app.observability.setup import (
    FASTAPI_OPTIONS,
    instrument_app,
    setup_telemetry,
    shutdown_telemetry,
)
from app.settings import DEFAULT_DOMAIN, Settings
from app.supervision import Supervision, use

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the service. `settings` defaults to the environment (APP_* variables)."""
    settings = settings or Settings()
    instance_id = new_node_id()
    setup_telemetry(settings, instance_id)
    domain = load_domain(settings.domain)

    services = Services(settings)

    async def start(stack: AsyncExitStack, supervision: Supervision) -> Drain:
        """The database, the brokers and everything on them; stopped by `stack`."""
        readiness = Readiness()
        await stack.enter_async_context(history.sampling())
        database = service_database(settings, domain, readiness)
        services.database = await stack.enter_async_context(database)
        services.rebuilder = rebuilder = Rebuilder(
            settings, domain, instance_id, supervision, services.database
        )
        readiness.add(rebuilder.readiness, required=services.database is None)
        stack.callback(shutdown_telemetry)
        stack.push_async_callback(rebuilder.stop)
        await rebuilder.start()
        if services.database is not None:
            stack.enter_context(relaying(services))
        services.readiness = readiness
        services.drain = drain = Drain(readiness, rebuilder, settings.drain_timeout)
        return drain

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services.supervision = supervision = Supervision()
        use(supervision)  # every task the instance starts from here reports to it
        async with AsyncExitStack() as stack:
            try:
                drain = await start(stack, supervision)
            except QosMeshError as exc:
                start_failed(log, exc)
                raise
            log.info("service started", extra={"service": settings.service_name})
            runtime = services.rebuilder.current if services.rebuilder is not None else None
            if runtime is not None and banner.wanted(settings):
                print(banner.render(settings, services, runtime), file=sys.stderr, flush=True)
            elif runtime is not None:
                log.info(banner.one_line(settings, services, runtime))
            yield
            log.info("service stopping", extra={"service": settings.service_name})
            await drain.begin()

    app = FastAPI(
        title=settings.service_name,
        version=__version__,
        lifespan=lifespan,
        docs_url=None,  # served offline by app/api/docs.py
        redoc_url=None,
        **FASTAPI_OPTIONS,
    )
    app.state.services = services
    problems.install(app, settings.max_body_bytes)
    openapi.install(app)
    docs.install(app)
    instrument_app(app)
    built_in = (
        health.router,
        nodes.router,
        cluster.router,
        admin.router,
        outbox.router,
        console.router,
        docs.router,
        asyncapi.router,
    )
    if domain is not None:
        # First: requests are matched route by route, and the domain's carry the traffic.
        _refuse_shadowing(domain.router, built_in)
        app.include_router(domain.router)
    for router in built_in:
        app.include_router(router)
    return app


def _refuse_shadowing(domain: APIRouter, built_in: tuple[APIRouter, ...]) -> None:
    """Matched first, a domain route on a built-in's path and method would hide it."""
    taken = {
        (route.path, method)
        for router in built_in
        for route in router.routes
        if isinstance(route, APIRoute)
        for method in route.methods or ()
    }
    for route in domain.routes:
        if isinstance(route, APIRoute):
            clash = sorted(m for m in route.methods or () if (route.path, m) in taken)
            if clash:
                raise ConfigurationError(
                    f"the domain's {', '.join(clash)} {route.path} would hide qosmesh's own"
                )


def load_domain(name: str) -> ModuleType | None:
    """The domain package named by APP_DOMAIN: a module with `router` (an APIRouter) and
    `async setup(bus, brokers, settings)` that registers its handlers. The default, the example,
    may be deleted from a generated service; any other name must import."""
    if not name:
        return None
    if name == DEFAULT_DOMAIN and importlib.util.find_spec(name) is None:
        return None
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ConfigurationError(f"APP_DOMAIN={name!r} cannot be imported: {exc}") from exc


def __getattr__(name: str) -> Any:
    """`uvicorn app.main:app` builds the app from the environment when it is first asked for."""
    if name == "app":
        return create_app()
    raise AttributeError(name)
