"""This instance as a NATS micro service (ADR-32): it answers `$SRV.PING`, `$SRV.INFO` and
`$SRV.STATS`, for all services, for its service's name, and for its name and id, so `nats micro
ls`, `nats micro info` and any ADR-32 client see qosmesh instances next to other NATS services.

It adds no endpoint: a micro endpoint is a queue subscription, and one on a message subject would
take messages from the consumers. INFO names the message subscriptions in its metadata; STATS
reports one entry per handler, from the counters `/metrics` shows (docs/discovery.md).
nats-py's `nats.micro` is not used because its STATS can only describe its own endpoints.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscription

from app import __version__
from app.bus import Bus
from app.observability.scrape import CONSUMED, PROCESS_SECONDS, samples, total
from app.settings import Settings

log = logging.getLogger(__name__)

PREFIX = "$SRV"
VERBS = ("PING", "INFO", "STATS")
PING_TYPE = "io.nats.micro.v1.ping_response"
INFO_TYPE = "io.nats.micro.v1.info_response"
STATS_TYPE = "io.nats.micro.v1.stats_response"
PROCESS_STARTED = datetime.now(UTC)


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
        answers = {"PING": self._ping, "INFO": self._info, "STATS": self._stats}
        for verb in VERBS:
            answer = answers[verb]
            for subject in self.subjects(verb):
                self._subscriptions.append(
                    await self._nc.subscribe(subject, cb=self._replier(answer))
                )

    async def stop(self) -> None:
        subscriptions, self._subscriptions = self._subscriptions, []
        for subscription in subscriptions:
            try:
                await subscription.unsubscribe()
            except Exception as exc:  # the connection is gone: so are the subscriptions
                log.debug("micro: unsubscribe failed: %s", exc)

    def _replier(self, answer: Any) -> Any:
        async def reply(msg: Msg) -> None:
            if not msg.reply:
                return
            try:
                await msg.respond(json.dumps(answer()).encode())
            except Exception as exc:
                log.debug("micro: no answer to %s: %s", msg.subject, exc)

        return reply

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

    def _stats(self) -> dict[str, Any]:
        found = samples()
        endpoints = []
        for transport, sub in self._bus.consumers:
            dest = {"messaging_destination_name": sub.subject}
            handled = int(total(found, CONSUMED, **dest))
            errors = int(total(found, CONSUMED, **dest, outcome="nak"))
            errors += int(total(found, CONSUMED, **dest, outcome="term"))
            busy = round(total(found, PROCESS_SECONDS, **dest) * 1e9)
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
