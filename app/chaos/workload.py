"""The clients: careful users of the example's REST API.

Each client places orders and pays them (every command with its Idempotency-Key), and reads
them back. A 503 or a lost answer is tried again with the same key, on whichever instance comes
next, a few times with backoff. What a client does is drawn from the seed: the same seed gives
the same operations, keys, amounts and instances tried; only which earlier order a payment
goes to can differ, since only orders answered 202 are paid.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass

import httpx

from app.chaos.history import Attempt, Operation

ATTEMPTS = 8
HTTP_TIMEOUT = 8.0


@dataclass(frozen=True, slots=True)
class Load:
    clients: int = 4
    think: float = 0.03  # at most this long between a client's operations


async def drive(
    seed: int, urls: list[str], started: float, until: float, load: Load
) -> list[Operation]:
    """Run the clients until `until` (monotonic); each finishes the operation it is on."""
    clients = [Client(seed, number, urls, started) for number in range(load.clients)]
    await asyncio.gather(*(client.run(until, load.think) for client in clients))
    return sorted((op for c in clients for op in c.operations), key=_started)


def _started(op: Operation) -> float:
    return op.attempts[0].start if op.attempts else 0.0


class Client:
    def __init__(self, seed: int, number: int, urls: list[str], started: float) -> None:
        self.number = number
        self.urls = urls
        self.started = started
        self.plan = random.Random(f"{seed}/client/{number}")  # noqa: S311 (seeded on purpose)
        self.route = random.Random(f"{seed}/client/{number}/route")  # noqa: S311
        self.operations: list[Operation] = []
        self.places: list[Operation] = []

    async def run(self, until: float, think: float) -> None:
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT) as http:
            number = 0
            while time.monotonic() < until:
                op = self.next(number)
                number += 1
                if op is not None:
                    await self.perform(http, op)
                    self.operations.append(op)
                await asyncio.sleep(self.plan.uniform(0, think))

    def next(self, number: int) -> Operation | None:
        """Operation `number`; None when it would pay or read an order that was not placed."""
        draw, pick, amount = (
            self.plan.random(),
            self.plan.randrange(1 << 30),
            self.plan.randint(1, 999),
        )
        key = f"c{self.number}-{number}"
        if draw < 0.35 or not self.places:
            op = Operation(self.number, number, "place", key)
            self.places.append(op)
            return op
        target = self.places[pick % len(self.places)]
        if target.outcome != "ok":
            return None
        if draw < 0.8:
            return Operation(self.number, number, "pay", key, target.order_id, amount)
        return Operation(self.number, number, "read", key, target.order_id)

    async def perform(self, http: httpx.AsyncClient, op: Operation) -> None:
        for tried in range(ATTEMPTS):
            instance = self.route.randrange(len(self.urls))
            start = time.monotonic() - self.started
            status, error, body = await self._send(http, self.urls[instance], op)
            end = time.monotonic() - self.started
            op.attempts.append(Attempt(instance, round(start, 3), round(end, 3), status, error))
            if status is not None and status != 503:
                if 200 <= status < 300 and op.kind != "read":
                    op.answer = body
                    if op.kind == "place":
                        op.order_id = body["order_id"]
                return
            await asyncio.sleep(min(2.0, 0.2 * 1.6**tried))

    async def _send(
        self, http: httpx.AsyncClient, url: str, op: Operation
    ) -> tuple[int | None, str, dict[str, str]]:
        key = {"Idempotency-Key": op.key}
        try:
            if op.kind == "place":
                order = {"sku": op.key, "quantity": 1}
                response = await http.post(f"{url}/orders", json=order, headers=key)
            elif op.kind == "pay":
                payment = {"amount": op.amount}
                path = f"{url}/orders/{op.order_id}/payments"
                response = await http.post(path, json=payment, headers=key)
            else:
                response = await http.get(f"{url}/orders/{op.order_id}")
        except httpx.HTTPError as exc:
            return None, type(exc).__name__, {}
        body = response.json() if 200 <= response.status_code < 300 else {}
        return response.status_code, "", body
