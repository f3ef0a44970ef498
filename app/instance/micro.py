"""This instance as a NATS micro service (ADR-32): it answers `$SRV.PING`, `$SRV.INFO` and
`$SRV.STATS`, for all services, for its service's name, and for its name and id, so `nats micro
ls`, `nats micro info` and any ADR-32 client see qosmesh instances next to other NATS services.

It adds no endpoint: a micro endpoint is a queue subscription, and one on a message subject would
take messages from the consumers. INFO names the message subscriptions in its metadata; STATS
reports one entry per handler, from the counters `/metrics` shows (docs/discovery.md).
nats-py's `nats.micro` is not used because its STATS can only describe its own endpoints.

Anyone on the bus can ask, as often as they like, and every instance answers a request to all
services: so PING and INFO are encoded once, STATS once per snapshot (a second), and an instance
sends at most REPLIES_PER_SECOND replies; a request over that gets none, and is counted.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscription

from app import __version__
from app.bus import Bus
from app.observability.instruments import micro_refused
from app.observability.snapshot import Snapshot, latest
from app.settings import Settings

log = logging.getLogger(__name__)

PREFIX = "$SRV"
VERBS = ("PING", "INFO", "STATS")
PING_TYPE = "io.nats.micro.v1.ping_response"
INFO_TYPE = "io.nats.micro.v1.info_response"
STATS_TYPE = "io.nats.micro.v1.stats_response"
PROCESS_STARTED = datetime.now(UTC)
REPLIES_PER_SECOND = 100
"""The replies an instance sends a second, every verb and subject together."""
REPLY_BURST = 100
"""The replies it sends at once after a quiet spell (the bucket's size)."""
WARN_EVERY = 60.0
"""Seconds between two warnings that requests go unanswered."""


class ReplyLimit:
    """A token bucket: `rate` replies a second on average, `burst` at once."""

    __slots__ = ("_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float = REPLIES_PER_SECOND, burst: float = REPLY_BURST) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._last = time.monotonic()

    def allow(self) -> bool:
        """Whether one more reply may go now (it is then counted against the limit)."""
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


class MicroService:
    """The ADR-32 control subjects of one instance; `stop` ends its answers."""

    def __init__(self, nc: NatsClient, settings: Settings, instance_id: str, bus: Bus) -> None:
        self._nc = nc
        self._bus = bus
        self.name = settings.service_name
        self.id = instance_id
        self._started = PROCESS_STARTED  # the counters STATS reports are the process's
        self._metadata = {
            "address": settings.public_url,
            "discovery.bucket": settings.discovery_bucket,
        }
        self._subscriptions: list[NatsSubscription] = []
        self._limit = ReplyLimit()
        self._warned = -WARN_EVERY
        self._pong = self._about = b""
        self._stats_of: Snapshot | None = None
        self._stats = b""

    def subjects(self, verb: str) -> list[str]:
        return [
            f"{PREFIX}.{verb}",
            f"{PREFIX}.{verb}.{self.name}",
            f"{PREFIX}.{verb}.{self.name}.{self.id}",
        ]

    async def start(self) -> None:
        self._metadata["subscriptions"] = json.dumps(
            [
                {"subject": sub.subject, "qos": int(sub.qos), "transport": transport}
                for transport, sub in self._bus.consumers
            ]
        )
        self._pong = json.dumps(self._ping()).encode()
        self._about = json.dumps(self._info()).encode()
        answers = {
            "PING": lambda: self._pong,
            "INFO": lambda: self._about,
            "STATS": self._stats_now,
        }
        for verb in VERBS:
            reply = self._replier(verb, answers[verb])
            for subject in self.subjects(verb):
                self._subscriptions.append(await self._nc.subscribe(subject, cb=reply))

    async def stop(self) -> None:
        subscriptions, self._subscriptions = self._subscriptions, []
        for subscription in subscriptions:
            try:
                await subscription.unsubscribe()
            except Exception as exc:  # the connection is gone: so are the subscriptions
                log.debug("micro: unsubscribe failed: %s", exc)

    def _replier(self, verb: str, answer: Callable[[], bytes]) -> Callable[[Msg], Awaitable[None]]:
        refused = micro_refused.series({"verb": verb})  # on record at zero from the start

        async def reply(msg: Msg) -> None:
            if not msg.reply:
                return
            if not self._limit.allow():
                refused.add()
                self._unanswered()
                return
            try:
                await self._nc.publish(msg.reply, answer())
            except Exception as exc:
                log.debug("micro: no answer to %s: %s", msg.subject, exc)

        return reply

    def _unanswered(self) -> None:
        now = time.monotonic()
        if now - self._warned >= WARN_EVERY:
            self._warned = now
            log.warning(
                "micro: more than %d requests a second, the rest go unanswered "
                "(qosmesh_micro_refused_total counts them)",
                REPLIES_PER_SECOND,
            )

    def _identity(self, kind: str) -> dict[str, Any]:
        return {
            "type": kind,
            "name": self.name,
            "id": self.id,
            "version": __version__,
            "metadata": self._metadata,
        }

    def _ping(self) -> dict[str, Any]:
        return self._identity(PING_TYPE)

    def _info(self) -> dict[str, Any]:
        description = f"{self.name}: a qosmesh service (messages in metadata.subscriptions)"
        return {**self._identity(INFO_TYPE), "description": description, "endpoints": []}

    def _stats_now(self) -> bytes:
        """The STATS reply, encoded once per snapshot."""
        snapshot = latest()
        if snapshot is not self._stats_of:
            self._stats = json.dumps(self._stats_reply(snapshot)).encode()
            self._stats_of = snapshot
        return self._stats

    def _stats_reply(self, snapshot: Snapshot) -> dict[str, Any]:
        endpoints = []
        for transport, sub in self._bus.consumers:
            handled = snapshot.handled(sub.subject)
            errors = snapshot.handled(sub.subject, "nak", "term")
            busy = round(snapshot.process_seconds.get(sub.subject, 0.0) * 1e9)
            endpoints.append(
                {
                    "name": sub.name,
                    "subject": sub.subject,
                    "queue_group": sub.group or "",
                    "num_requests": handled,
                    "num_errors": errors,
                    "last_error": "",
                    "processing_time": busy,
                    "average_processing_time": busy // handled if handled else 0,
                    "data": {"qos": int(sub.qos), "transport": transport},
                }
            )
        started = self._started.isoformat().replace("+00:00", "Z")
        return {**self._identity(STATS_TYPE), "started": started, "endpoints": endpoints}
