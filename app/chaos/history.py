"""What the clients did: one JSON line per HTTP attempt, and what each operation came to.

An operation is a command or a read with its Idempotency-Key; it is tried until it gets an
answer that is not a 503, or runs out of tries. Its outcome:
- `ok`: the last attempt got a 2xx, so the effect must be there;
- `failed`: a 4xx, so the effect must not be there;
- `indeterminate`: every attempt got a 503 or no answer, so the effect may or may not be there.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

Outcome = Literal["ok", "failed", "indeterminate"]


@dataclass(slots=True)
class Attempt:
    instance: int
    start: float
    end: float
    status: int | None  # None: no answer (connection refused, reset, timed out)
    error: str = ""


@dataclass(slots=True)
class Operation:
    """`place` creates an order (its sku is its key), `pay` adds `amount` to `order_id` once
    per key, `read` reads `order_id` back. The chaos domain's (app/chaos/domain.py), each with
    its key as the message id: `charge` (QoS 2, claims), `step` number `n` of the ordering key
    `ref` (QoS 1, through the outbox), `batch` of `n` charges `<key>-0`... (`publish_many`),
    `ping` (QoS 0), `remind` due `delay` seconds later (QoS 2, delayed), and `cancel` of the
    reminder `ref`."""

    client: int
    number: int
    kind: Literal["place", "pay", "read", "charge", "batch", "step", "ping", "remind", "cancel"]
    key: str
    order_id: str | None = None
    amount: int = 0
    attempts: list[Attempt] = field(default_factory=list)
    answer: dict[str, Any] | None = None  # the body of the 2xx (reads' too)
    ref: str | None = None
    n: int = 0
    delay: float = 0.0

    @property
    def outcome(self) -> Outcome:
        last = self.attempts[-1].status if self.attempts else None
        if last is not None and 200 <= last < 300:
            return "ok"
        if last is not None and 400 <= last < 500:
            return "failed"
        return "indeterminate"

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "outcome": self.outcome}


def write(path: Path, operations: Iterable[Operation]) -> None:
    with path.open("w") as out:
        for operation in operations:
            out.write(json.dumps(operation.as_json(), separators=(",", ":")) + "\n")


def read(path: Path) -> Iterator[Operation]:
    for line in path.read_text().splitlines():
        data = json.loads(line)
        data.pop("outcome", None)
        attempts = [Attempt(**attempt) for attempt in data.pop("attempts")]
        yield Operation(**data, attempts=attempts)
