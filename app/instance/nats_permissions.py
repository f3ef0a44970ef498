"""The NATS permissions one service needs, derived from what it declares (docs/security.md).

- Its channels, as its AsyncAPI document states them (the types it `publishes`, the types it
  handles), each through the transport that carries it: the transport says what its subjects,
  streams and consumers need (`TransportSpec.nats_permissions`). A transport the settings name
  is asked even with no channel: it may keep stores of its own (JetStream's dead letters).
- The shared discovery bucket: every key read, its own service's keys written.
- Its leases: a bucket of its own, and the core subject that says a lease was released.
- The NATS micro answers (`$SRV.PING|INFO|STATS`, to all, to its name, to one instance), sent
  on the asker's reply subject (`allow_responses`).
- Its inboxes (APP_NATS_INBOX_PREFIX).

A domain that uses NATS itself (outside the bus) adds its own subjects to the printed block.
"""

from __future__ import annotations

from collections.abc import Sequence

from app.brokers.connections import inbox_prefix
from app.brokers.permissions import (
    Permissions,
    combined,
    inboxes,
    owned_bucket,
    publishing,
    subscribing,
)
from app.bus import Bus
from app.discovery import bucket
from app.instance.micro import PREFIX, VERBS
from app.settings import Settings
from app.transports.registry import spec_of, wanted
from app.transports.spec import Channel


def channels(bus: Bus) -> list[Channel]:
    """The bus's declared subjects, one channel each, as `/asyncapi.json` lists them."""
    published, handled = bus.message_types
    found: dict[str, Channel] = {}

    def add(subject: str, transport: str, sends: bool, consumer: tuple[str | None, ...]) -> None:
        known = found.get(subject, Channel(subject, transport, sends=False))
        found[subject] = Channel(
            subject, transport, known.sends or sends, (*known.consumers, *consumer)
        )

    for message_type in published:
        add(bus.subject(message_type), bus.route(message_type)[1].name, True, ())
    for message_type, subscription in handled:
        name = subscription.name if subscription.group is not None else None
        add(subscription.subject, bus.route(message_type)[1].name, False, (name,))
    return list(found.values())


def service_permissions(settings: Settings, declared: Sequence[Channel]) -> Permissions:
    """Everything the service's NATS user needs, and nothing more."""
    service = settings.service_name
    carried = [
        spec_of(name).nats_permissions(settings, [c for c in declared if c.transport == name])
        for name in sorted(wanted(settings))
    ]
    # Named as Leases.open names them (app/coordination/leases.py).
    freed = f"qm-leases.{service}.freed"
    leases = owned_bucket(f"{service.replace('-', '_')}_leases") | publishing(freed)
    micro = subscribing(
        *(
            f"{PREFIX}.{verb}{suffix}"
            for verb in VERBS
            for suffix in ("", f".{service}", f".{service}.*")
        )
    )
    return combined(
        [
            *carried,
            bucket.nats_permissions(settings),
            leases | subscribing(freed),
            Permissions(subscribe=micro.subscribe, allow_responses=True),
            inboxes(inbox_prefix(settings)),
        ]
    )
