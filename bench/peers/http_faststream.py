"""`python -m bench.peers.http_faststream PORT NATS_URL SERVICE`: FastAPI + FastStream doing the
work of qosmesh's `POST /orders`, written to FastStream's documented API (its FastAPI `NatsRouter`,
`JStream`, `PullSub`, a publisher object), as its users would.

Validate the body, publish `OrderPlaced` to JetStream awaiting the PubAck (with a message id for
the stream's dedupe), create the order in a KV bucket; in the same process a durable pull
subscriber confirms it (KV get + compare-and-set), acking after the handler and nacking (a
redelivery) when it raises.
"""

from __future__ import annotations

import sys

from fastapi import FastAPI
from faststream import AckPolicy
from faststream.nats import JStream, PullSub
from faststream.nats.fastapi import NatsRouter
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


def build(nats_url: str, names: Names) -> FastAPI:
    router = NatsRouter(nats_url)
    stream = JStream(name=names.stream, subjects=[names.subject])
    publisher = router.publisher(names.subject, stream=stream)
    buckets: dict[str, KeyValue] = {}

    async def orders() -> KeyValue:
        if names.bucket not in buckets:
            buckets[names.bucket] = await router.broker.key_value(names.bucket)
        return buckets[names.bucket]

    @router.subscriber(
        names.subject,
        stream=stream,
        durable=names.durable,
        pull_sub=PullSub(batch_size=64, timeout=1),
        ack_policy=AckPolicy.NACK_ON_ERROR,
    )
    async def confirm_order(event: OrderPlaced) -> None:
        await confirm(await orders(), event)

    @router.post("/orders", status_code=202)
    async def place_order(body: PlaceOrder) -> OrderAccepted:
        order_id, message_id = new_id(), new_id()
        event = OrderPlaced(
            message_id=message_id, order_id=order_id, sku=body.sku, quantity=body.quantity
        )
        await publisher.publish(event, headers={"Nats-Msg-Id": message_id})
        order = Order(order_id=order_id, sku=body.sku, quantity=body.quantity)
        await create(await orders(), order)
        return OrderAccepted(order_id=order_id, message_id=message_id)

    @router.get("/readyz")
    async def ready() -> dict[str, str]:
        return {"status": "ready"}

    app = FastAPI()
    app.include_router(router)
    return app


if __name__ == "__main__":
    sys.exit(serve(build, sys.argv[1:]))
