"""`python -m bench.peers.http_raw PORT NATS_URL SERVICE`: FastAPI + nats-py, hand-written,
doing the work of qosmesh's `POST /orders`: the ceiling of the HTTP row.

Validate the body, publish `OrderPlaced` to JetStream awaiting the PubAck (with a message id for
the stream's dedupe), create the order in a KV bucket; in the same process a durable pull
consumer confirms it (KV get + compare-and-set) and acks after the handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator

import nats
import nats.errors
from fastapi import FastAPI
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, KeyValueConfig, StorageType, StreamConfig
from nats.js.kv import KeyValue

from bench.peers.orders_work import (
    Names,
    Order,
    OrderAccepted,
    OrderPlaced,
    PlaceOrder,
    confirm,
    create,
    new_id,
    serve,
)


class Shop:
    js: JetStreamContext
    kv: KeyValue


def build(nats_url: str, names: Names) -> FastAPI:
    shop = Shop()

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        await js.add_stream(
            StreamConfig(name=names.stream, subjects=[names.subject], storage=StorageType.FILE)
        )
        kv = await js.create_key_value(
            KeyValueConfig(bucket=names.bucket, storage=StorageType.FILE)
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
                    await confirm(kv, OrderPlaced.model_validate_json(msg.data))
                    await msg.ack()

        shop.js, shop.kv = js, kv
        consumer = asyncio.create_task(consume())
        yield
        consumer.cancel()
        await nc.drain()

    app = FastAPI(lifespan=lifespan)

    @app.post("/orders", status_code=202)
    async def place_order(body: PlaceOrder) -> OrderAccepted:
        order_id, message_id = new_id(), new_id()
        event = OrderPlaced(
            message_id=message_id, order_id=order_id, sku=body.sku, quantity=body.quantity
        )
        await shop.js.publish(
            names.subject, event.model_dump_json().encode(), headers={"Nats-Msg-Id": message_id}
        )
        await create(shop.kv, Order(order_id=order_id, sku=body.sku, quantity=body.quantity))
        return OrderAccepted(order_id=order_id, message_id=message_id)

    @app.get("/readyz")
    async def ready() -> dict[str, str]:
        return {"status": "ready"}  # the lifespan has run before the first request

    return app


if __name__ == "__main__":
    sys.exit(serve(build, sys.argv[1:]))
