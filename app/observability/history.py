"""The last minutes of this instance's numbers, for the console's charts: a snapshot read every
`EVERY` seconds, the newest `KEPT` kept in memory (nothing is written anywhere). Charts of the
whole service line the instances' histories up by their wall-clock times (app/api/messaging.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator

from app.observability.snapshot import Snapshot, read

log = logging.getLogger(__name__)

EVERY = 2.0
"""Seconds between two samples: a chart's resolution."""
KEPT = 300
"""Samples kept: ten minutes at one every two seconds."""


class History:
    """This process's samples, oldest first."""

    def __init__(self, kept: int = KEPT) -> None:
        self._samples: deque[Snapshot] = deque(maxlen=kept)

    def sample(self) -> None:
        self._samples.append(read())

    def samples(self) -> list[Snapshot]:
        return list(self._samples)

    async def run(self, every: float) -> None:
        while True:
            try:
                self.sample()
            except Exception:  # a reading that failed is a gap in the chart, not a stop
                log.exception("numbers not sampled for the console's charts")
            await asyncio.sleep(every)


HISTORY = History()
"""The process's: the instruments are the process's too."""


@contextlib.asynccontextmanager
async def sampling(every: float = EVERY) -> AsyncIterator[History]:
    """Sample into `HISTORY` while the context is open."""
    task = asyncio.create_task(HISTORY.run(every), name="console history")
    try:
        yield HISTORY
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
