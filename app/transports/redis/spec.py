"""The Redis Streams transport's descriptor."""

from __future__ import annotations

from typing import TYPE_CHECKING

from app.errors import ConfigurationError
from app.settings import Settings
from app.transports.redis.claims import RedisClaimStore
from app.transports.redis.transport import RETRYABLE, RedisStreamsTransport, batch_client
from app.transports.spec import Built, TransportSpec

if TYPE_CHECKING:
    from app.brokers import Brokers


async def _build(settings: Settings, brokers: Brokers) -> Built:
    if brokers.redis is None:
        raise ConfigurationError("transport 'redis' needs a Redis connection")
    batches = batch_client(brokers.redis)
    brokers.close_with(batches.aclose)
    transport = RedisStreamsTransport(brokers.redis, settings, batches=batches)
    return Built(transport, RedisClaimStore(brokers.redis, settings))


SPEC = TransportSpec(
    "redis",
    "redis",
    reliable=True,
    needs_redis=True,
    build=_build,
    transient=RETRYABLE,
    redelivery_after=lambda settings: settings.redis_claim_idle,
)
