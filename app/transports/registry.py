"""Every transport qosmesh knows, by name, and the building of those the settings ask for.

Adding a transport is a package with its `SPEC` (app/transports/spec.py) and one line in
`BUILT_IN` below (docs/architecture.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from app.errors import ConfigurationError
from app.qos.claims import ClaimStore
from app.settings import Settings
from app.transports import memory, nats_core
from app.transports.base import Transport
from app.transports.jetstream.spec import SPEC as JETSTREAM
from app.transports.redis.spec import SPEC as REDIS
from app.transports.spec import TransportSpec

if TYPE_CHECKING:
    from app.brokers import Brokers

BUILT_IN = (memory.SPEC, nats_core.SPEC, JETSTREAM, REDIS)
"""qosmesh's own transports; a new one of its own is a line here."""

SPECS: dict[str, TransportSpec] = {spec.name: spec for spec in BUILT_IN}
"""Every transport known by name: the built-in ones and those registered since."""


def register(spec: TransportSpec) -> None:
    """Make a transport from outside app/transports known by its name (a test's, a plugin's)."""
    if spec.name in SPECS and SPECS[spec.name] is not spec:
        raise ConfigurationError(f"transport {spec.name!r} is registered already")
    SPECS[spec.name] = spec


def spec_of(name: str) -> TransportSpec:
    spec = SPECS.get(name)
    if spec is None:
        known = ", ".join(sorted(SPECS))
        raise ConfigurationError(f"transport {name!r} is not known (known: {known})")
    return spec


@dataclass(slots=True)
class Transports:
    by_name: dict[str, Transport] = field(default_factory=dict)
    claim_stores: dict[str, ClaimStore] = field(default_factory=dict)
    specs: dict[str, TransportSpec] = field(default_factory=dict)


def wanted(settings: Settings) -> set[str]:
    """The transports the settings name; ConfigurationError, naming the variable, for one the
    registry does not know."""
    named = {
        "APP_QOS0_TRANSPORT": settings.qos0_transport,
        "APP_QOS1_TRANSPORT": settings.qos1_transport,
        "APP_QOS2_TRANSPORT": settings.qos2_transport,
    }
    for type_name, override in settings.qos_overrides.items():
        if override.transport:
            named[f"APP_QOS_OVERRIDES[{type_name}]"] = override.transport
    for variable, name in named.items():
        if name not in SPECS:
            known = ", ".join(sorted(SPECS))
            raise ConfigurationError(f"{variable}: unknown transport {name!r} (known: {known})")
    return set(named.values())


def needs_redis(settings: Settings) -> bool:
    """Whether a transport the settings ask for needs the Redis connection."""
    return settings.redis_url is not None or any(
        SPECS[name].needs_redis for name in wanted(settings)
    )


async def build_transports(settings: Settings, brokers: Brokers) -> Transports:
    built = Transports()
    for name in sorted(wanted(settings)):
        spec = spec_of(name)
        transport, claims = await spec.build(settings, brokers)
        built.by_name[name], built.specs[name] = transport, spec
        if claims is not None:
            built.claim_stores[name] = claims
    return built
