"""`python -m bench.peers.http_raw PORT NATS_URL DATABASE_URL SERVICE`: FastAPI + asyncpg +
nats-py, hand-written, doing the work of qosmesh's `POST /orders`: the ceiling of the HTTP row.

Validate the body, insert the order into PostgreSQL, publish `OrderPlaced` to JetStream awaiting
the PubAck (with a message id for the stream's dedupe); in the same process a durable pull
consumer confirms it (an UPDATE) and acks after the handler. Two writes and no outbox: a crash
between them loses the event, which is what qosmesh's outbox is for.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator

import asyncpg
import nats
from fastapi import FastAPI
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, StorageType, StreamConfig

from bench.peers.orders_work import (
    Names,
    OrderAccepted,
    OrderPlaced,
    PlaceOrder,
    confirm_order,
    create_table,
    insert_order,
    new_id,
    serve,
)


class Shop:
    js: JetStreamContext
    pool: asyncpg.Pool


def build(nats_url: str, database_url: str, names: Names) -> FastAPI:
    shop = Shop()
    insert, confirm = insert_order(names), confirm_order(names)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        pool = await asyncpg.create_pool(database_url, min_size=4, max_size=16)
        await pool.execute(create_table(names))
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        await js.add_stream(
            StreamConfig(name=names.stream, subjects=[names.subject], storage=StorageType.FILE)
        )
        sub = await js.pull_subscribe(
            names.subject, names.durable, config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT)
        )

        async def consume() -> None:
            while True:
                try:
                    batch = await sub.fetch(64, timeout=1)
                except TimeoutError:  # nats-py raises its own or asyncio's
                    continue
                for msg in batch:
                    event = OrderPlaced.model_validate_json(msg.data)
                    await pool.execute(confirm, event.order_id)
                    await msg.ack()

        shop.js, shop.pool = js, pool
        consumer = asyncio.create_task(consume())
        yield
        consumer.cancel()
        await nc.drain()
        await pool.close()

    app = FastAPI(lifespan=lifespan)

    @app.post("/orders", status_code=202)
    async def place_order(body: PlaceOrder) -> OrderAccepted:
        order_id, message_id = new_id(), new_id()
        await shop.pool.execute(insert, order_id, body.sku, body.quantity)
        event = OrderPlaced(
            message_id=message_id, order_id=order_id, sku=body.sku, quantity=body.quantity
        )
        await shop.js.publish(
            names.subject, event.model_dump_json().encode(), headers={"Nats-Msg-Id": message_id}
        )
        return OrderAccepted(order_id=order_id, message_id=message_id)

    @app.get("/readyz")
    async def ready() -> dict[str, str]:
        return {"status": "ready"}

    return app


if __name__ == "__main__":
    sys.exit(serve(build, sys.argv[1:]))
