"""The outbox's instruments: its backlog, oldest unsent row, dead rows and rows waiting to be
retried (read by the relay on its interval), and the time from a row's write to the broker's
ack of its publish."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from opentelemetry.metrics import CallbackOptions, Observation

from app.observability.instruments import SECONDS_BUCKETS, Histogram, meter


class OutboxLevels:
    """The outbox's levels as the relay last read them (on its interval, never per message);
    None until it has."""

    backlog: int | None = None
    oldest_seconds: float | None = None
    dead: int | None = None
    retrying: int | None = None


outbox_levels = OutboxLevels()


def _observe(level: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def observe(options: CallbackOptions) -> Iterable[Observation]:
        value = getattr(outbox_levels, level)
        if value is not None:
            yield Observation(value)

    return observe


outbox_backlog = meter.create_observable_gauge(
    "qosmesh.outbox.backlog",
    callbacks=[_observe("backlog")],
    unit="{message}",
    description="Outbox rows committed and not yet published (dead rows aside)",
)
outbox_oldest = meter.create_observable_gauge(
    "qosmesh.outbox.oldest_unsent",
    callbacks=[_observe("oldest_seconds")],
    unit="s",
    description="Age of the oldest outbox row not yet published (dead rows aside)",
)
outbox_dead = meter.create_observable_gauge(
    "qosmesh.outbox.dead",
    callbacks=[_observe("dead")],
    unit="{message}",
    description="Outbox rows set aside because the broker or the code refuses them for good",
)
outbox_retrying = meter.create_observable_gauge(
    "qosmesh.outbox.retrying",
    callbacks=[_observe("retrying")],
    unit="{message}",
    description="Outbox rows whose publish failed, waiting for their next attempt",
)
relay_duration = Histogram(
    "qosmesh.outbox.relay.duration",
    unit="s",
    description="From an outbox row's write to the broker's ack of its publish",
    boundaries=SECONDS_BUCKETS,
)
