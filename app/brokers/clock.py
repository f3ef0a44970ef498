"""The broker's clock, as this host can read it: delayed messages are due by it, not by the
clock of whichever host published or moves them.

Hosts' clocks disagree (an NTP step, a VM resumed, a container with a skewed clock). A message
published "in 60 s" by a host running 30 s ahead, and moved by a lease holder running 30 s
behind, must still fire no earlier than 60 s after it was published by the broker's clock. So
due times are taken from the broker's time, and judged against it: this host keeps the offset
between the broker's clock and its own, measured from an answer of the broker halfway through
the request's round trip, and measures it again when it is older than `MAX_AGE`.

The probes: nats-server stamps every JetStream API answer with its time (`ts`); Redis answers
`TIME`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import redis.asyncio as aioredis
from nats.aio.client import Client as NatsClient

MAX_AGE = 10.0
"""Seconds an offset is used before it is measured again."""
MAX_ROUND_TRIP = 0.5
"""A probe slower than this is not used (the offset is known only to half the round trip, and
a broker frozen after stamping its answer would make it too small): the last offset stays."""
RETRY_AFTER = 1.0
"""Seconds between two tries while the broker does not answer (each would wait its timeout)."""
REQUEST_TIMEOUT = 2.0

Probe = Callable[[], Awaitable[float]]
"""The broker's time now, in Unix seconds."""


class ServerClock:
    """The broker's time: the last measure of it, plus the monotonic time since."""

    def __init__(self, probe: Probe) -> None:
        self._probe = probe
        self._server = 0.0  # the broker's time (Unix seconds), stamped between ...
        self._sent = 0.0  # ... the request's sending and ...
        self._answered = 0.0  # ... its answer, on this host's monotonic clock
        self._measured = -math.inf  # monotonic

    async def sync(self) -> None:
        sent = time.monotonic()
        server = await self._probe()
        answered = time.monotonic()
        if answered - sent > MAX_ROUND_TRIP and self._measured != -math.inf:
            self._measured = answered - MAX_AGE + RETRY_AFTER  # soon again
            return
        self._server, self._sent, self._answered = server, sent, answered
        self._measured = answered

    async def now(self) -> datetime:
        """The latest the broker's time can be now, from a measure at most `MAX_AGE` old
        (measured again when older; the last one is counted on from when the broker does not
        answer): what due times are counted from."""
        await self._fresh()
        return datetime.fromtimestamp(self._server + time.monotonic() - self._sent, UTC)

    async def earliest(self) -> datetime:
        """The earliest the broker's time can be now: what is due is judged by it."""
        await self._fresh()
        return datetime.fromtimestamp(self._server + time.monotonic() - self._answered, UTC)

    async def _fresh(self) -> None:
        if time.monotonic() - self._measured > MAX_AGE:
            try:
                await self.sync()
            except Exception:  # the broker away: the last offset is the best there is
                if self._measured == -math.inf:
                    raise
                self._measured = time.monotonic() - MAX_AGE + RETRY_AFTER


def nats_time(nc: NatsClient, stream: Callable[[], str]) -> Probe:
    """nats-server's time, from the `ts` of its answer about the stream `stream()` names."""

    async def probe() -> float:
        answer = await nc.request(f"$JS.API.STREAM.INFO.{stream()}", b"", timeout=REQUEST_TIMEOUT)
        stamp = str(json.loads(answer.data)["ts"])
        whole, _, fraction = stamp.rstrip("Z").partition(".")
        parsed = datetime.fromisoformat(f"{whole}+00:00")
        return parsed.timestamp() + float(f"0.{fraction or '0'}")

    return probe


def redis_time(redis: aioredis.Redis) -> Probe:
    """Redis's time, from `TIME`."""

    async def probe() -> float:
        seconds, micros = await redis.time()
        return int(seconds) + int(micros) / 1_000_000

    return probe
