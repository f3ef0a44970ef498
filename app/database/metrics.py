"""The outbox's instruments: its backlog, oldest unsent row and dead rows (read by the relay on
its interval), and the time from a row's write to the broker's ack of its publish."""

from __future__ import annotations

from collections.abc import Iterable

from opentelemetry.metrics import CallbackOptions, Observation

from app.observability.instruments import SECONDS_BUCKETS, Histogram, meter


class OutboxLevels:
    """The outbox's backlog and the age of its oldest unsent row, as the relay last read them
    (on its interval, never per message); None until it has."""

    backlog: int | None = None
    oldest_seconds: float | None = None
    dead: int | None = None


outbox_levels = OutboxLevels()


def _observe_backlog(options: CallbackOptions) -> Iterable[Observation]:
    if outbox_levels.backlog is not None:
        yield Observation(outbox_levels.backlog)


def _observe_oldest(options: CallbackOptions) -> Iterable[Observation]:
    if outbox_levels.oldest_seconds is not None:
        yield Observation(outbox_levels.oldest_seconds)


def _observe_dead(options: CallbackOptions) -> Iterable[Observation]:
    if outbox_levels.dead is not None:
        yield Observation(outbox_levels.dead)


outbox_backlog = meter.create_observable_gauge(
    "qosmesh.outbox.backlog",
    callbacks=[_observe_backlog],
    unit="{message}",
    description="Outbox rows committed and not yet published",
)
outbox_oldest = meter.create_observable_gauge(
    "qosmesh.outbox.oldest_unsent",
    callbacks=[_observe_oldest],
    unit="s",
    description="Age of the oldest outbox row not yet published",
)
outbox_dead = meter.create_observable_gauge(
    "qosmesh.outbox.dead",
    callbacks=[_observe_dead],
    unit="{message}",
    description="Outbox rows set aside because the broker refuses them as they are (too large)",
)
relay_duration = Histogram(
    "qosmesh.outbox.relay.duration",
    unit="s",
    description="From an outbox row's write to the broker's ack of its publish",
    boundaries=SECONDS_BUCKETS,
)
