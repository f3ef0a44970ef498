"""What the example keeps while it runs, as its endpoints get it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends

from app.api.deps import ServicesDep
from app.api.idempotency_keys import IdempotencyKeys
from app.example.orders import OrderStore


@dataclass(slots=True)
class Example:
    orders: OrderStore
    keys: IdempotencyKeys


async def get_example(services: ServicesDep) -> Example:
    """The example's state, as its `setup` made it for the current runtime."""
    example: Example = services.domain
    return example


ExampleDep = Annotated[Example, Depends(get_example)]
