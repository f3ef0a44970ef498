"""The example's NATS permissions are derived without a broker or its database: `python -m app
nats-permissions` runs the example's setup on a bus that never connects (docs/security.md)."""

from __future__ import annotations

from app.cli.nats_permissions import derive
from app.instance.declared import declared_bus
from app.instance.nats_permissions import channels
from app.main import load_domain
from app.settings import Settings
from app.transports.spec import Channel


async def test_the_example_is_declared_without_a_broker_or_a_database():
    """The example keeps its data in PostgreSQL: its handlers are declared all the same."""
    settings = Settings.model_validate({"service_name": "shop"})
    bus = await declared_bus(settings, load_domain(settings.domain))
    declared = {channel.subject: channel for channel in channels(bus)}
    assert declared["shop.payment_captured"] == Channel(
        "shop.payment_captured", "jetstream", sends=True, consumers=("shop__payment_captured",)
    )
    shop = await derive(settings)
    assert "$JS.API.CONSUMER.MSG.NEXT.SHOP_PAYMENT_CAPTURED.>" in shop.publish
