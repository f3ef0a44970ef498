"""What the JetStream transport needs of the service's NATS user (docs/security.md).

- A subject the service sends: its stream, owned (set up, read, purged, consumed), the subject
  and its schedules' subjects.
- A subject it only receives: the stream, shared with its owner (set up the same way, a message
  read by sequence for a dead letter), its own consumers on it, and the subject itself, for a
  dead letter replayed where it came from.
- Always: its dead-letter stream, its consumer of the shared advisory stream, its QoS 2 claims
  bucket, and the fallback scheduler's stream unless the server's schedules are required.
"""

from __future__ import annotations

from collections.abc import Sequence

from app.brokers.permissions import (
    Permissions,
    combined,
    consumer,
    owned_bucket,
    owned_stream,
    publishing,
    shared_stream,
)
from app.settings import Settings
from app.transports.jetstream.claims import bucket_name
from app.transports.jetstream.dead_letters import ADVISORY_STREAM
from app.transports.jetstream.schedules import fallback_prefix, fallback_stream, schedule_subjects
from app.transports.jetstream.streams import stream_name
from app.transports.spec import Channel

PER_INSTANCE = "*"
"""A broadcast consumer's name ends with its instance's id: any name on that stream."""


def nats_permissions(settings: Settings, channels: Sequence[Channel]) -> Permissions:
    return _always(settings) | combined(_channel(settings, channel) for channel in channels)


def _channel(settings: Settings, channel: Channel) -> Permissions:
    stream = stream_name(channel.subject)
    if channel.sends:
        schedules = (
            (schedule_subjects(channel.subject),) if settings.scheduler != "fallback" else ()
        )
        return owned_stream(stream) | publishing(channel.subject, *schedules)
    consumers = (consumer(stream, name or PER_INSTANCE) for name in channel.consumers)
    return shared_stream(stream) | combined(consumers) | publishing(channel.subject)


def _always(settings: Settings) -> Permissions:
    service = settings.service_name
    # Named as JetStreamDeadLetters names them (dead_letters.py).
    dead_letters = f"{service.upper().replace('-', '_')}_DLQ"
    parts = [
        owned_stream(dead_letters),
        publishing(f"dlq.{service}"),
        shared_stream(ADVISORY_STREAM, read=False),
        consumer(ADVISORY_STREAM, f"{service}__advisories"),
        owned_bucket(bucket_name(settings)),
    ]
    if settings.scheduler != "native":
        parts += [
            owned_stream(fallback_stream(service)),
            publishing(f"{fallback_prefix(service)}.*"),
        ]
    return combined(parts)
