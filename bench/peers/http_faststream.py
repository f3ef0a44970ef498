"""`python -m bench.peers.http_faststream PORT NATS_URL DATABASE_URL SERVICE`: FastAPI +
FastStream + SQLAlchemy doing the work of qosmesh's `POST /orders`, written to FastStream's
documented API (its FastAPI `NatsRouter`, `JStream`, `PullSub`, a publisher object) and
SQLAlchemy's async engine, as their users would.

Validate the body, insert the order into PostgreSQL, publish `OrderPlaced` to JetStream awaiting
the PubAck (with a message id for the stream's dedupe); in the same process a durable pull
subscriber confirms it (an UPDATE), acking after the handler and nacking (a redelivery) when it
raises. Two writes and no outbox, as FastStream's documentation leaves it to the user.
"""

from __future__ import annotations

import sys

from fastapi import FastAPI
from faststream import AckPolicy
from faststream.nats import JStream, PullSub
from faststream.nats.fastapi import NatsRouter
from sqlalchemy import text
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


def build(nats_url: str, database_url: str, names: Names) -> FastAPI:
    engine = create_async_engine(
        database_url.replace("postgresql://", "postgresql+asyncpg://", 1), pool_size=16
    )
    insert = text(named(insert_order(names)))
    confirm = text(named(confirm_order(names)))
    router = NatsRouter(nats_url)
    stream = JStream(name=names.stream, subjects=[names.subject])
    publisher = router.publisher(names.subject, stream=stream)

    @router.after_startup
    async def schema(_: FastAPI) -> None:
        async with engine.begin() as connection:
            await connection.execute(text(create_table(names)))

    @router.subscriber(
        names.subject,
        stream=stream,
        durable=names.durable,
        pull_sub=PullSub(batch_size=64, timeout=1),
        ack_policy=AckPolicy.NACK_ON_ERROR,
    )
    async def confirm_placed(event: OrderPlaced) -> None:
        async with engine.begin() as connection:
            await connection.execute(confirm, {"id": event.order_id})

    @router.post("/orders", status_code=202)
    async def place_order(body: PlaceOrder) -> OrderAccepted:
        order_id, message_id = new_id(), new_id()
        async with engine.begin() as connection:
            values = {"id": order_id, "sku": body.sku, "q": body.quantity}
            await connection.execute(insert, values)
        event = OrderPlaced(
            message_id=message_id, order_id=order_id, sku=body.sku, quantity=body.quantity
        )
        await publisher.publish(event, headers={"Nats-Msg-Id": message_id})
        return OrderAccepted(order_id=order_id, message_id=message_id)

    @router.get("/readyz")
    async def ready() -> dict[str, str]:
        return {"status": "ready"}

    app = FastAPI()
    app.include_router(router)
    return app


if __name__ == "__main__":
    sys.exit(serve(build, sys.argv[1:]))
