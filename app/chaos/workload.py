"""The clients: careful users of the example's REST API and of the chaos domain's.

Each client places orders and pays them (every command with its Idempotency-Key), and reads
them back; it charges (QoS 2, one at a time or a batch with `publish_many`), steps its own
ordering key (QoS 1 through the outbox), pings (QoS 0), and sets reminders (delayed QoS 2) and
cancels some of them, each message with its own id. A 503 or a
lost answer is tried again with the same key, on whichever instance comes next, a few times
with backoff. What a client does is drawn from the seed: the same seed gives the same
operations, keys, amounts and instances tried; only which earlier order a payment or reminder
a cancel goes to can differ, since only what was answered 202 is paid or cancelled.
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


@dataclass(slots=True)
class Deadline:
    """When the clients stop (monotonic); moved while they run, once the faults are over."""

    at: float


@dataclass(frozen=True, slots=True)
class Load:
    clients: int = 4
    think: float = 0.03  # at most this long between a client's operations


async def drive(
    seed: int, urls: list[str], started: float, until: Deadline, load: Load
) -> list[Operation]:
    """Run the clients until `until`; each finishes the operation it is on."""
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
        self.reminders: list[Operation] = []
        self.steps = 0  # the last step number of this client's ordering key

    async def run(self, until: Deadline, think: float) -> None:
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT) as http:
            number = 0
            while time.monotonic() < until.at:
                op = self.next(number)
                number += 1
                if op is not None:
                    await self.perform(http, op)
                    self.operations.append(op)
                await asyncio.sleep(self.plan.uniform(0, think))

    def next(self, number: int) -> Operation | None:
        """Operation `number`; None when it would pay, read or cancel what was not accepted."""
        draw, pick, amount = (
            self.plan.random(),
            self.plan.randrange(1 << 30),
            self.plan.randint(1, 999),
        )
        key = f"c{self.number}-{number}"
        if draw < 0.25 or not self.places:
            op = Operation(self.number, number, "place", key)
            self.places.append(op)
            return op
        if draw < 0.62:
            target = self.places[pick % len(self.places)]
            if target.outcome != "ok":
                return None
            if draw < 0.5:
                return Operation(self.number, number, "pay", key, target.order_id, amount)
            return Operation(self.number, number, "read", key, target.order_id)
        if draw < 0.74:
            if amount % 4 == 0:  # a quarter of the charges go as a batch (publish_many)
                return Operation(self.number, number, "batch", key, n=2 + amount % 3)
            return Operation(self.number, number, "charge", key)
        if draw < 0.84:
            if amount % 3 == 0:  # a third of these are QoS 0 pings
                return Operation(self.number, number, "ping", key)
            self.steps += 1
            return Operation(self.number, number, "step", key, ref=f"s{self.number}", n=self.steps)
        if draw < 0.93 or not self.reminders:
            op = Operation(self.number, number, "remind", key, delay=0.5 + amount / 999 * 3.5)
            self.reminders.append(op)
            return op
        reminder = self.reminders[pick % len(self.reminders)]
        if reminder.outcome != "ok":
            return None
        return Operation(self.number, number, "cancel", key, ref=reminder.key)

    async def perform(self, http: httpx.AsyncClient, op: Operation) -> None:
        for tried in range(ATTEMPTS):
            instance = self.route.randrange(len(self.urls))
            start = time.monotonic() - self.started
            status, error, body = await self._send(http, self.urls[instance], op)
            end = time.monotonic() - self.started
            op.attempts.append(Attempt(instance, round(start, 3), round(end, 3), status, error))
            if status is not None and status != 503:
                if 200 <= status < 300:
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
            elif op.kind == "read":
                response = await http.get(f"{url}/orders/{op.order_id}")
            elif op.kind == "charge":
                response = await http.post(f"{url}/chaos/charges", json={"id": op.key})
            elif op.kind == "batch":
                batch = {"id": op.key, "count": op.n}
                response = await http.post(f"{url}/chaos/batches", json=batch)
            elif op.kind == "ping":
                response = await http.post(f"{url}/chaos/pings", json={"id": op.key})
            elif op.kind == "step":
                step = {"key": op.ref, "n": op.n, "id": op.key}
                response = await http.post(f"{url}/chaos/steps", json=step)
            elif op.kind == "remind":
                remind = {"id": op.key, "delay": op.delay}
                response = await http.post(f"{url}/chaos/reminders", json=remind)
            else:
                response = await http.delete(f"{url}/chaos/reminders/{op.ref}")
        except httpx.HTTPError as exc:
            return None, type(exc).__name__, {}
        body = response.json() if 200 <= response.status_code < 300 else {}
        return response.status_code, "", body
