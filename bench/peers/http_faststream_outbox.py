"""`python -m bench.peers.http_faststream_outbox PORT NATS_URL DATABASE_URL SERVICE`: FastAPI +
FastStream + faststream-outbox doing the work of qosmesh's `POST /orders` with the same
guarantee, written to faststream-outbox's documented FastAPI relay (an `OutboxRouter` whose
subscriber has a JetStream publisher of FastStream's `NatsRouter` stacked on it) and SQLAlchemy's
async engine.

Validate the body, then insert the order and its outbox row (`broker.publish(..., session=)`) in
one transaction. The outbox subscriber claims committed rows (woken by LISTEN/NOTIFY) and hands
each body back to the JetStream publisher, which awaits the PubAck; the row is deleted after.
The message id rides along as `Nats-Msg-Id` (`propagate_inbound_headers`), so a row relayed
twice is stored once. In the same process a durable pull subscriber confirms the order (an
UPDATE), acking after the handler, as bench/peers/http_faststream.py does.

The relay is tuned as faststream-outbox's performance guide says for a busy queue whose handler
is idempotent: `RELAY_WORKERS` workers, `RELAY_BATCH` rows a claim, their deletes batched
`RELAY_BATCH` at a time (a crash may relay up to a batch again, which the stream's dedupe absorbs).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from faststream import AckPolicy
from faststream.nats import JStream, PullSub
from faststream.nats.fastapi import NatsRouter
from faststream_outbox import make_outbox_table, outbox_autovacuum_ddl
from faststream_outbox.fastapi import OutboxRouter
from sqlalchemy import MetaData, text
from sqlalchemy.ext.asyncio import create_async_engine

from bench.peers.orders_work import (
    Names,
    OrderAccepted,
    OrderPlaced,
    PlaceOrder,
    confirm_order,
    create_table,
    insert_order,
    named,
    new_id,
    serve,
)

REQUESTS_POOL = 16  # connections for the requests and the confirming handler, as the other peers
RELAY_WORKERS = 8
RELAY_BATCH = 64  # the pull subscribers' batch in the other peers


def build(nats_url: str, database_url: str, names: Names) -> FastAPI:
    # The relay holds one connection per worker and one to claim rows with, for as long as it
    # runs (faststream-outbox's connection budget); the requests get the rest.
    engine = create_async_engine(
        database_url.replace("postgresql://", "postgresql+asyncpg://", 1),
        pool_size=REQUESTS_POOL + RELAY_WORKERS + 1,
    )
    metadata = MetaData()
    outbox_table = make_outbox_table(metadata, table_name=f"{names.service}_outbox")
    insert = text(named(insert_order(names)))
    confirm = text(named(confirm_order(names)))
    nats = NatsRouter(nats_url)
    outbox = OutboxRouter(engine, outbox_table=outbox_table)
    stream = JStream(name=names.stream, subjects=[names.subject])

    @nats.publisher(names.subject, stream=stream)
    @outbox.subscriber(
        names.subject,
        max_workers=RELAY_WORKERS,
        fetch_batch_size=RELAY_BATCH,
        terminal_flush_batch_size=RELAY_BATCH,
        propagate_inbound_headers=True,
    )
    async def relay(body: dict[str, Any]) -> dict[str, Any]:
        return body

    @nats.subscriber(
        names.subject,
        stream=stream,
        durable=names.durable,
        pull_sub=PullSub(batch_size=RELAY_BATCH, timeout=1),
        ack_policy=AckPolicy.NACK_ON_ERROR,
    )
    async def confirm_placed(event: OrderPlaced) -> None:
        async with engine.begin() as connection:
            await connection.execute(confirm, {"id": event.order_id})

    @outbox.post("/orders", status_code=202)
    async def place_order(body: PlaceOrder) -> OrderAccepted:
        order_id, message_id = new_id(), new_id()
        event = OrderPlaced(
            message_id=message_id, order_id=order_id, sku=body.sku, quantity=body.quantity
        )
        async with engine.begin() as connection:
            values = {"id": order_id, "sku": body.sku, "q": body.quantity}
            await connection.execute(insert, values)
            await outbox.broker.publish(
                event,
                queue=names.subject,
                session=connection,
                headers={"Nats-Msg-Id": message_id},
            )
        return OrderAccepted(order_id=order_id, message_id=message_id)

    @outbox.get("/readyz")
    async def ready() -> dict[str, str]:
        return {"status": "ready"}

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # The app's own lifespan runs before the routers' (FastAPI nests them in that order):
        # the tables exist before the relay claims its first row. The engine is the caller's
        # to dispose of, after the routers have stopped.
        async with engine.begin() as connection:
            await connection.execute(text(create_table(names)))
            await connection.run_sync(metadata.create_all)
            await connection.execute(text(outbox_autovacuum_ddl(outbox_table.name)))
        yield
        await engine.dispose()

    app = FastAPI(lifespan=lifespan)
    # NATS first: the relay's publisher is connected before the relay starts, and it stops
    # after the relay has drained.
    app.include_router(nats)
    app.include_router(outbox)
    return app


if __name__ == "__main__":
    sys.exit(serve(build, sys.argv[1:]))
