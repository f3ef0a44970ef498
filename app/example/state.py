"""What the example keeps while it runs, as its endpoints get it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated

from fastapi import Depends, Request

from app.bus import Bus
from app.database.connection import Database
from app.instance.services import services_of


@dataclass(slots=True)
class Example:
    database: Database
    bus: Bus  # its publishes go to the outbox: they need no broker connection
    payment_timeout: timedelta | None = None  # unpaid orders are cancelled after it


async def get_example(request: Request) -> Example:
    """The example's state, as its `setup` made it for the current runtime."""
    example: Example = services_of(request.app).domain
    return example


ExampleDep = Annotated[Example, Depends(get_example)]
