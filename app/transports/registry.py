"""Builds the transports (and their QoS 2 idempotency stores) that the settings ask for."""

from __future__ import annotations

from dataclasses import dataclass, field

from app.brokers import Brokers
from app.errors import ConfigurationError
from app.idempotency import (
    IdempotencyStore,
    KvIdempotencyStore,
    MemoryIdempotencyStore,
    RedisIdempotencyStore,
)
from app.settings import Settings
from app.transports.base import Transport
from app.transports.jetstream import JetStreamTransport
from app.transports.memory import MemoryTransport
from app.transports.nats_core import NatsCoreTransport
from app.transports.redis_streams import RedisStreamsTransport


@dataclass(slots=True)
class Transports:
    by_name: dict[str, Transport] = field(default_factory=dict)
    idempotency: dict[str, IdempotencyStore] = field(default_factory=dict)


def wanted(settings: Settings) -> set[str]:
    names: set[str] = {settings.qos0_transport, settings.qos1_transport, settings.qos2_transport}
    names.update(o.transport for o in settings.qos_overrides.values() if o.transport)
    return names


async def build_transports(settings: Settings, brokers: Brokers) -> Transports:
    built = Transports()
    for name in sorted(wanted(settings)):
        if name == "memory":
            built.by_name[name] = MemoryTransport(settings)
            built.idempotency[name] = MemoryIdempotencyStore(settings.idempotency_ttl)
        elif name == "nats":
            built.by_name[name] = NatsCoreTransport(brokers.nc)
        elif name == "jetstream":
            built.by_name[name] = JetStreamTransport(brokers.nc, brokers.js, settings)
            built.idempotency[name] = await KvIdempotencyStore.open(brokers.js, settings)
        elif name == "redis":
            if brokers.redis is None:
                raise ConfigurationError("transport 'redis' needs a Redis connection")
            built.by_name[name] = RedisStreamsTransport(
                brokers.redis, settings, batches=brokers.redis_batches
            )
            built.idempotency[name] = RedisIdempotencyStore(brokers.redis, settings)
        else:
            raise ConfigurationError(f"transport {name!r} is not available yet")
    return built
