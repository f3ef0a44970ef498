"""NATS user permissions as a value: the subjects a user may publish and subscribe to, built from
what it does with a stream or a KV bucket, and written as the `permissions` block of a
nats-server configuration.

JetStream is reached by publishing requests to `$JS.API.<verb>.<stream>...` (the answer comes
back on the caller's inbox), acks go to `$JS.ACK.<stream>.<consumer>.>` and flow-control
replies to `$JS.FC.<stream>.>`. A KV bucket `b` is the stream `KV_b` with the subjects
`$KV.b.<key>`. Nothing here knows qosmesh: which streams and buckets a service uses is said by
the transports, discovery and the instance (app/instance/nats_permissions.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

API = "$JS.API"
OWNER_VERBS = ("CREATE", "UPDATE", "INFO", "PURGE")
"""What an owner does to its stream: create it, bring it to its config, read it, purge subjects.
Never DELETE: no instance removes a stream."""
SHARER_VERBS = ("CREATE", "UPDATE", "INFO")
"""What a service does to a stream it shares with its owner: every user brings the stream to the
same config at start (app/transports/jetstream/streams.py), whoever comes first creates it."""


@dataclass(frozen=True, slots=True)
class Permissions:
    """Subjects a NATS user may publish and subscribe to; `allow_responses` lets it answer a
    request on the request's reply subject, whatever that is (once, within a minute)."""

    publish: tuple[str, ...] = ()
    subscribe: tuple[str, ...] = ()
    allow_responses: bool = False

    def __or__(self, other: Permissions) -> Permissions:
        return Permissions(
            _unique([*self.publish, *other.publish]),
            _unique([*self.subscribe, *other.subscribe]),
            self.allow_responses or other.allow_responses,
        )

    def as_dict(self) -> dict[str, object]:
        """As nats-server's configuration (and the Helm values) spell it."""
        block: dict[str, object] = {
            "publish": {"allow": list(self.publish)},
            "subscribe": {"allow": list(self.subscribe)},
        }
        if self.allow_responses:
            block["allow_responses"] = True
        return block

    def config_block(self) -> str:
        """The `permissions { ... }` block of a user in nats-server's configuration."""
        lines = ["permissions {"]
        for kind, subjects in (("publish", self.publish), ("subscribe", self.subscribe)):
            lines += [f"  {kind} {{", "    allow = ["]
            lines += [f"      {json.dumps(subject)}" for subject in subjects]
            lines += ["    ]", "  }"]
        if self.allow_responses:
            lines.append("  allow_responses = true")
        lines.append("}")
        return "\n".join(lines)


def combined(parts: Iterable[Permissions]) -> Permissions:
    result = Permissions()
    for part in parts:
        result = result | part
    return result


def publishing(*subjects: str) -> Permissions:
    return Permissions(publish=_unique(subjects))


def subscribing(*subjects: str) -> Permissions:
    return Permissions(subscribe=_unique(subjects))


def owned_stream(stream: str) -> Permissions:
    """Everything a service does with a stream of its own: set it up, read and delete messages
    (also by direct get), purge subjects, and keep consumers of any name on it."""
    return publishing(
        *(f"{API}.STREAM.{verb}.{stream}" for verb in OWNER_VERBS),
        f"{API}.STREAM.MSG.GET.{stream}",
        f"{API}.STREAM.MSG.DELETE.{stream}",
        f"{API}.DIRECT.GET.{stream}",
        f"{API}.DIRECT.GET.{stream}.>",
        f"{API}.CONSUMER.CREATE.{stream}",
        f"{API}.CONSUMER.CREATE.{stream}.>",
        f"{API}.CONSUMER.DURABLE.CREATE.{stream}.>",
        f"{API}.CONSUMER.INFO.{stream}.>",
        f"{API}.CONSUMER.DELETE.{stream}.>",
        f"{API}.CONSUMER.MSG.NEXT.{stream}.>",
        f"$JS.ACK.{stream}.>",
        f"$JS.FC.{stream}.>",
    )


def shared_stream(stream: str, *, read: bool = True) -> Permissions:
    """A stream that another service owns as well: set it up (the same config for all), and,
    with `read`, get a message of it by its sequence (one named in a dead-letter advisory)."""
    reads = (f"{API}.STREAM.MSG.GET.{stream}",) if read else ()
    return publishing(*(f"{API}.STREAM.{verb}.{stream}" for verb in SHARER_VERBS), *reads)


def consumer(stream: str, name: str) -> Permissions:
    """One durable pull consumer on a stream: create and read it, pull from it, settle its
    deliveries. `name` may be `*` (any consumer of the stream: one per instance)."""
    return publishing(
        f"{API}.CONSUMER.CREATE.{stream}.{name}",
        f"{API}.CONSUMER.CREATE.{stream}.{name}.>",
        f"{API}.CONSUMER.DURABLE.CREATE.{stream}.{name}",
        f"{API}.CONSUMER.INFO.{stream}.{name}",
        f"{API}.CONSUMER.MSG.NEXT.{stream}.{name}",
        f"$JS.ACK.{stream}.{name}.>",
    )


def owned_bucket(bucket: str) -> Permissions:
    """A KV bucket of the service's own: every key, and its stream."""
    return owned_stream(f"KV_{bucket}") | publishing(f"$KV.{bucket}.>")


def watched_bucket(bucket: str, writes: str) -> Permissions:
    """A KV bucket shared between services: create it when missing, read and watch every key
    (an ordered consumer each time), and write the keys `writes` (a subject pattern under the
    bucket, e.g. `svc.*`)."""
    stream = f"KV_{bucket}"
    return publishing(
        f"{API}.INFO",  # creating a bucket with limit markers asks the account's API level
        f"{API}.STREAM.CREATE.{stream}",
        f"{API}.STREAM.INFO.{stream}",
        f"{API}.STREAM.MSG.GET.{stream}",
        f"{API}.DIRECT.GET.{stream}",
        f"{API}.DIRECT.GET.{stream}.>",
        f"{API}.CONSUMER.CREATE.{stream}",
        f"{API}.CONSUMER.CREATE.{stream}.>",
        f"{API}.CONSUMER.INFO.{stream}.>",
        f"{API}.CONSUMER.DELETE.{stream}.>",
        f"$JS.FC.{stream}.>",
        f"$KV.{bucket}.{writes}",
    )


def inboxes(prefix: str) -> Permissions:
    """Replies to the user's own requests, JetStream's included, and its consumers' deliveries."""
    return subscribing(f"{prefix}.>")


def _unique(subjects: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(subjects))
