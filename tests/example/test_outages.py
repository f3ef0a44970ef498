"""Commands under load while the broker or the database goes away, on real servers: every
command answered 202 takes effect once after the outage, and the outbox drains."""

import asyncio
import contextlib
import itertools
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime

import httpx
import pytest
from sqlalchemy import func, select

from app.database.tables import outbox
from app.instance.services import services_of
from app.messages import H_ID
from app.testing import eventually, running_app

pytestmark = pytest.mark.slow


@dataclass
class Load:
    orders: list[str] = field(default_factory=list)  # order ids answered 202
    payments: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(dict))
    statuses: list[int] = field(default_factory=list)


async def drive(client: httpx.AsyncClient, load: Load, seconds: float) -> None:
    """Orders, and payments on the orders already accepted, for `seconds`, four at a time."""
    keys = itertools.count()
    deadline = time.monotonic() + seconds

    async def worker(n: int) -> None:
        for turn in itertools.count():
            if time.monotonic() > deadline:
                return
            try:
                if load.orders and turn % 2:
                    order_id = load.orders[-1 - (n + turn) % len(load.orders)]
                    key = f"pay-{next(keys)}"
                    response = await client.post(
                        f"/orders/{order_id}/payments",
                        json={"amount": 5},
                        headers={"Idempotency-Key": key},
                    )
                    if response.status_code == 202:
                        load.payments[order_id][key] = 5
                else:
                    response = await client.post("/orders", json={"sku": "load", "quantity": 1})
                    if response.status_code == 202:
                        load.orders.append(response.json()["order_id"])
                load.statuses.append(response.status_code)
            except httpx.HTTPError:
                load.statuses.append(0)
            await asyncio.sleep(0.02)

    await asyncio.gather(*(worker(n) for n in range(4)))


async def every_command_applied_once(client: httpx.AsyncClient, load: Load) -> bool:
    for order_id in load.orders:
        body = (await client.get(f"/orders/{order_id}")).json()
        if body.get("status") != "confirmed":
            return False
        if body["paid"] != sum(load.payments.get(order_id, {}).values()):
            return False
    return True


async def backlog(app) -> int:
    database = services_of(app).database
    assert database is not None
    async with database.sessions() as session:
        count = select(func.count()).where(outbox.c.sent_at.is_(None))
        return int((await session.execute(count)).scalar_one())


@contextlib.asynccontextmanager
async def serving(
    settings_for, nats_server, postgres_server, **overrides: object
) -> AsyncIterator[tuple[object, str]]:
    settings = settings_for(
        nats_url=nats_server.url,
        database_url=postgres_server.url,
        database_migrate=True,
        publish_attempt_timeout=0.5,
        publish_deadline=2,
        ack_wait=2,
        **overrides,
    )
    async with running_app(settings) as (app, url):
        yield app, url


@pytest.fixture
async def shop(settings_for, nats_server, postgres_server) -> AsyncIterator[tuple[object, str]]:
    async with serving(settings_for, nats_server, postgres_server) as running:
        yield running


async def test_broker_stopped_for_10s_under_orders_and_payments(shop, nats_server):
    app, url = shop
    load = Load()
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:

        async def outage() -> None:
            await asyncio.sleep(2)
            await asyncio.to_thread(nats_server.kill)
            await asyncio.sleep(10)
            await asyncio.to_thread(nats_server.start)

        await asyncio.gather(drive(client, load, 15), outage())
        print(f"\n{len(load.orders)} orders, {sum(map(len, load.payments.values()))} payments")
        assert set(load.statuses) == {202}  # the database never went away
        await eventually(lambda: every_command_applied_once(client, load), timeout=60)
        await eventually(lambda: _drained(app), message="every outbox row marked sent")


async def test_database_restarted_under_load_loses_no_accepted_command(shop, postgres_server):
    app, url = shop
    load = Load()
    async with httpx.AsyncClient(base_url=url, timeout=40) as client:

        async def restart() -> None:
            await asyncio.sleep(2)
            await asyncio.to_thread(postgres_server.kill)
            await asyncio.sleep(2)
            await asyncio.to_thread(postgres_server.start, 30)

        await asyncio.gather(drive(client, load, 8), restart())
        print(f"\nstatuses: { {s: load.statuses.count(s) for s in set(load.statuses)} }")
        assert set(load.statuses) <= {202, 503}
        assert load.statuses.count(503) > 0  # the outage was felt
        await eventually(lambda: every_command_applied_once(client, load), timeout=60)
        await eventually(lambda: _drained(app), message="every outbox row marked sent")


@pytest.fixture
async def small_backlog_shop(
    settings_for, nats_server, postgres_server
) -> AsyncIterator[tuple[object, str]]:
    async with serving(
        settings_for, nats_server, postgres_server, outbox_max_backlog=40
    ) as running:
        yield running


@pytest.mark.long  # CI: the fault schedules' broker-pause-long (seed 505) under the example
async def test_a_20s_broker_outage_kills_no_row_turns_readiness_off_and_drains_every_key_in_order(
    small_backlog_shop, nats_server
):
    """The broker is away for 20 s under orders and payments. Every row fails again and again
    on its own backoff and none is set aside as dead; /readyz turns 503 once the backlog passes
    APP_OUTBOX_MAX_BACKLOG (40), and 200 again after. Every key (an order) drains in commit
    order: its OrderPlaced reached the broker before its payments."""
    app, url = small_backlog_shop
    load = Load()
    ready: list[int] = []
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:

        async def watch_readiness(seconds: float) -> None:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                ready.append((await client.get("/readyz")).status_code)
                await asyncio.sleep(0.5)

        async def outage() -> None:
            await asyncio.sleep(1)
            await asyncio.to_thread(nats_server.kill)
            await asyncio.sleep(20)
            await asyncio.to_thread(nats_server.start)

        await asyncio.gather(drive(client, load, 22), outage(), watch_readiness(22))
        assert len(load.orders) > 40  # enough load to pass the limit
        assert 503 in ready  # back-pressure fired during the outage
        await eventually(lambda: every_command_applied_once(client, load), timeout=90)
        await eventually(
            lambda: _ready(client), timeout=15, message="ready again once the outbox drained"
        )
    database = services_of(app).database
    assert database is not None
    async with database.sessions() as session:
        rows = (
            await session.execute(
                select(outbox.c.message_id, outbox.c.ordering_key, outbox.c.dead_at).order_by(
                    outbox.c.id
                )
            )
        ).all()
    assert [row for row in rows if row.dead_at is not None] == []
    stored = await _stored_times(services_of(app).brokers.js)
    by_key: dict[str, list[datetime]] = defaultdict(list)
    for row in rows:  # in commit order within each key
        by_key[row.ordering_key].append(stored[row.message_id])
    assert len(by_key) == len(load.orders)
    assert all(times == sorted(times) for times in by_key.values())


async def _stored_times(js) -> dict[str, datetime]:
    """When the broker stored each message of the example's two streams, by message id: one
    server's clock, so comparable across the streams."""
    times: dict[str, datetime] = {}
    for stream in ("QOSMESH_ORDER_PLACED", "QOSMESH_PAYMENT_CAPTURED"):
        info = await js.stream_info(stream)
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            message = await js.get_msg(stream, seq)
            assert message.headers is not None
            assert message.time is not None
            times[message.headers[H_ID]] = message.time
    return times


async def _drained(app) -> bool:
    return await backlog(app) == 0


async def _ready(client: httpx.AsyncClient) -> bool:
    return (await client.get("/readyz")).status_code == 200
