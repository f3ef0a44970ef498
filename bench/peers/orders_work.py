"""The work of `POST /orders`, as the HTTP peers do it: the same body, row and event as the
example's (app/example), written the way a FastAPI service without qosmesh would write them:
the order inserted into PostgreSQL, then the event published (two writes, no outbox), and a
consumer that confirms the order with an UPDATE and acks after it."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field


@dataclass(frozen=True, slots=True)
class Names:
    """Where one peer keeps its orders: its own subject, stream, consumer and table."""

    service: str

    @property
    def subject(self) -> str:
        return f"{self.service}.order_placed"

    @property
    def stream(self) -> str:
        return f"{self.service.upper()}_ORDER_PLACED"

    @property
    def durable(self) -> str:
        return f"{self.service}__order_placed"

    @property
    def table(self) -> str:
        return f"{self.service}_orders"


class PlaceOrder(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sku: str = Field(min_length=1, max_length=64)
    quantity: int = Field(ge=1, le=10000)


class OrderAccepted(BaseModel):
    order_id: str
    message_id: str
    status: Literal["pending"] = "pending"


class OrderPlaced(BaseModel):
    message_id: str
    order_id: str
    sku: str
    quantity: int


def serve(build: Callable[[str, str, Names], FastAPI], argv: list[str]) -> int:
    """`PORT NATS_URL DATABASE_URL SERVICE`: run the service `build` makes under uvicorn."""
    port, nats_url, database_url, service = int(argv[0]), argv[1], argv[2], argv[3]
    app = build(nats_url, database_url, Names(service))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
    return 0


def new_id() -> str:
    return uuid.uuid4().hex


def create_table(names: Names) -> str:
    return (
        f"CREATE TABLE IF NOT EXISTS {names.table} ("
        " order_id text PRIMARY KEY, sku text NOT NULL, quantity integer NOT NULL,"
        " status text NOT NULL DEFAULT 'pending', paid bigint NOT NULL DEFAULT 0,"
        " created_at timestamptz NOT NULL DEFAULT now(),"
        " updated_at timestamptz NOT NULL DEFAULT now())"
    )


def insert_order(names: Names) -> str:
    # The table's name is made by the benchmark, never from input: no injection to fear.
    return f"INSERT INTO {names.table} (order_id, sku, quantity) VALUES ($1, $2, $3)"  # noqa: S608


def confirm_order(names: Names) -> str:
    return (
        f"UPDATE {names.table} SET status = 'confirmed', updated_at = now()"  # noqa: S608
        " WHERE order_id = $1 AND status = 'pending'"
    )


def named(statement: str) -> str:
    """`statement` with SQLAlchemy's named parameters (`text()` takes no `$n`): :id, :sku, :q."""
    return statement.replace("$1", ":id").replace("$2", ":sku").replace("$3", ":q")
