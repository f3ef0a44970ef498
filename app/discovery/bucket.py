"""Opening the shared discovery bucket: create it the first time, otherwise use it as it is,
and find out how crashed nodes can be detected in it."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import (
    BadRequestError,
    BucketNotFoundError,
    KeyValueLimitMarkerTTLNotSupportedError,
)
from nats.js.kv import KeyValue

from app.brokers.permissions import Permissions, watched_bucket
from app.settings import Settings

log = logging.getLogger(__name__)

HISTORY = 1
"""Only the latest value of a key matters; older heartbeats are dead weight."""

MARKERS_SINCE = (2, 11)


@dataclass(frozen=True, slots=True)
class Bucket:
    kv: KeyValue
    ttl: float
    limit_markers: bool
    """True: the server writes a marker when a key expires, so watchers see crashes.
    False: expiry is silent and each instance sweeps its own view."""


def server_supports_markers(nc: NatsClient) -> bool:
    try:
        version = nc.connected_server_version
        return (version.major, version.minor) >= MARKERS_SINCE
    except (ValueError, TypeError):
        return False


async def open_discovery_bucket(
    nc: NatsClient, js: JetStreamContext, settings: Settings, *, limit_markers: bool = True
) -> Bucket:
    """The bucket named by APP_DISCOVERY_BUCKET; an existing one is never reconfigured.

    `limit_markers=False` creates a new bucket without markers and ignores those of an existing
    one: the sweep fallback that old servers get.
    """
    name = settings.discovery_bucket
    try:
        kv = await js.key_value(name)
    except BucketNotFoundError:
        kv = await _create(js, settings, limit_markers and server_supports_markers(nc))
    status = await kv.status()
    ttl = status.ttl or 0.0
    if ttl <= 0:
        log.warning(
            "discovery bucket %s has no TTL: crashed nodes stay in the bucket; their "
            "heartbeats are judged against APP_NODE_TTL=%s instead",
            name,
            settings.node_ttl,
        )
        return Bucket(kv, settings.node_ttl, limit_markers=False)
    if abs(ttl - settings.node_ttl) > 1e-3:
        log.warning(
            "discovery bucket %s has TTL %ss but APP_NODE_TTL is %ss: following the bucket "
            "(its TTL applies to every instance; it is never changed once created)",
            name,
            ttl,
            settings.node_ttl,
        )
    return Bucket(kv, ttl, limit_markers=limit_markers and bool(status.marker_ttl))


async def _create(js: JetStreamContext, settings: Settings, limit_markers: bool) -> KeyValue:
    config = KeyValueConfig(
        bucket=settings.discovery_bucket,
        description="qosmesh node discovery",
        history=HISTORY,
        ttl=settings.node_ttl,
        storage=StorageType.FILE,
        replicas=settings.replicas,
        limit_marker_ttl=max(1.0, settings.node_ttl) if limit_markers else None,
    )
    try:
        kv = await js.create_key_value(config=config)
    except KeyValueLimitMarkerTTLNotSupportedError:
        log.info("nats-server has no KV limit markers: creating the bucket without them")
        kv = await js.create_key_value(config=config.evolve(limit_marker_ttl=None))
    except BadRequestError:
        # Another instance created it first, with another config: use theirs.
        return await js.key_value(settings.discovery_bucket)
    log.info(
        "created discovery bucket %s (ttl %ss, %d replicas)",
        settings.discovery_bucket,
        settings.node_ttl,
        settings.replicas,
    )
    return kv


def nats_permissions(settings: Settings) -> Permissions:
    """The shared bucket as one service's NATS user needs it: every key read and watched, the
    bucket created by whoever comes first, and only its own service's keys written
    (`<service>.<node id>`, NodeInfo.key)."""
    return watched_bucket(settings.discovery_bucket, f"{settings.service_name}.*")
