"""Delayed messages in the running service: where the broker does not fire them by itself, the
instance holding the lease `scheduler-<transport>` moves the due ones to their subjects; every
instance reports how many wait (`qosmesh_scheduled_messages{messaging_system}`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Iterable, Mapping
from typing import Any

from opentelemetry.metrics import CallbackOptions, Observation

from app.coordination.leases import Leases, singleton
from app.observability.instruments import meter
from app.transports.base import MOVE_EVERY, Schedules, Transport
from app.transports.registry import spec_of

log = logging.getLogger(__name__)

BACKLOG_EVERY = 5.0

_backlog: dict[str, int] = {}  # system -> messages waiting, as last read


def jobs(
    transports: Mapping[str, Transport], leases: Leases
) -> list[tuple[str, Coroutine[Any, Any, None]]]:
    """The coroutines to run for the life of the runtime, with their names."""
    found = [(t.name, t.schedules) for t in transports.values() if t.schedules is not None]
    result: list[tuple[str, Coroutine[Any, Any, None]]] = []
    for name, schedules in found:
        if not schedules.native:
            lease = f"scheduler-{name}"
            result.append((lease, singleton(leases, lease, MOVE_EVERY)(schedules.move_due)()))
    if found:
        result.append(("scheduled backlog", _watch_backlog(found)))
    return result


async def _watch_backlog(found: list[tuple[str, Schedules]]) -> None:
    while True:
        for name, schedules in found:
            try:
                _backlog[spec_of(name).system] = await schedules.backlog()
            except Exception as exc:  # the next round reads it again
                log.debug("scheduled backlog of %s not read: %s", name, exc)
        await asyncio.sleep(BACKLOG_EVERY)


def _observe(options: CallbackOptions) -> Iterable[Observation]:
    for system, count in list(_backlog.items()):
        yield Observation(count, {"messaging.system": system})


meter.create_observable_gauge(
    "qosmesh.scheduled.messages",
    callbacks=[_observe],
    unit="{message}",
    description="Delayed messages kept by the broker that have not fired yet",
)
