"""Reading a run of a stream's messages in one request: JetStream's batched direct get
(`$JS.API.DIRECT.GET.<stream>` with a `batch`, ADR-31, nats-server 2.11 and later).

nats-py reads one message per request (`get_msg`); listing a few hundred dead letters that
way costs a few hundred round trips, and one more for every deleted sequence in between. A
batch answers with the stored messages from a sequence on, holes skipped, then an end-of-batch
status (`204 EOB`). The stream needs `allow_direct`.

This speaks the server's documented API through nats-py's public calls (subscribe, publish,
the status headers nats-py parses), no private one; what it relies on is the server's version
(docs/performance.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from app.errors import BrokerUnavailableError

STATUS = "Status"
END_OF_BATCH = "204"
NOT_FOUND = "404"
SERVER_HEADERS = frozenset(
    {
        "Nats-Stream",
        "Nats-Subject",
        "Nats-Sequence",
        "Nats-Time-Stamp",
        "Nats-Num-Pending",
        "Nats-Last-Sequence",
    }
)
"""What the server adds to every message of a direct get; not part of the stored message."""
MAX_BYTES = 4 * 1024 * 1024
"""The most one batch carries: a run of large messages comes in several requests."""


FIRST_SERVER = (2, 11)
"""The first nats-server release that answers a batch."""


def batches(nc: NatsClient) -> bool:
    """Whether the server this client is connected to answers batched direct gets."""
    version = nc.connected_server_version
    try:
        return (version.major, version.minor) >= FIRST_SERVER
    except (TypeError, ValueError):  # an unreadable version: assume an old server
        return False


@dataclass(frozen=True, slots=True)
class Stored:
    """One stored message as a direct get returns it."""

    seq: int
    subject: str
    headers: Mapping[str, str]
    body: bytes
    time: datetime | None


async def read_run(
    nc: NatsClient, stream: str, first: int, last: int, timeout: float = 5.0
) -> tuple[list[Stored], int]:
    """The messages of `stream` stored at sequences `first` to `last`, oldest first, and how
    many requests it took (several only when they exceed MAX_BYTES)."""
    found: list[Stored] = []
    requests = 0
    start = first
    while start <= last:
        batch, pending = await _batch(nc, stream, start, last - start + 1, timeout)
        requests += 1
        found.extend(m for m in batch if m.seq <= last)
        if not batch or batch[-1].seq >= last or pending == 0:
            break
        start = batch[-1].seq + 1
    return found, requests


async def _batch(
    nc: NatsClient, stream: str, start: int, count: int, timeout: float
) -> tuple[list[Stored], int]:
    """One batch request: up to `count` stored messages from `start` on, and how many the
    stream holds after the last one returned."""
    replies: asyncio.Queue[Msg] = asyncio.Queue()
    inbox = nc.new_inbox()
    subscription = await nc.subscribe(inbox, cb=replies.put)
    request = {"seq": start, "batch": count, "max_bytes": MAX_BYTES}
    found: list[Stored] = []
    try:
        await nc.publish(f"$JS.API.DIRECT.GET.{stream}", json.dumps(request).encode(), reply=inbox)
        async with asyncio.timeout(timeout):
            while True:
                msg = await replies.get()
                headers = {str(k): str(v) for k, v in (msg.headers or {}).items()}
                if "Nats-Sequence" in headers:  # a stored message (its own headers may say
                    found.append(_stored(headers, msg.data))  # anything, `Status` too)
                    continue
                status = headers.get(STATUS)
                if status == END_OF_BATCH:
                    return found, int(headers.get("Nats-Num-Pending", "0") or 0)
                if status == NOT_FOUND:
                    return found, 0
                raise BrokerUnavailableError(
                    f"direct get on {stream}: {status} {headers.get('Description', '')}"
                )
    except TimeoutError:
        raise BrokerUnavailableError(f"direct get on {stream}: no answer in {timeout} s") from None
    finally:
        with contextlib.suppress(Exception):
            await subscription.unsubscribe()


def _stored(headers: dict[str, str], body: bytes) -> Stored:
    stamp = headers.get("Nats-Time-Stamp", "")
    return Stored(
        seq=int(headers["Nats-Sequence"]),
        subject=headers.get("Nats-Subject", ""),
        headers={k: v for k, v in headers.items() if k not in SERVER_HEADERS},
        body=body,
        time=_time(stamp),
    )


def _time(stamp: str) -> datetime | None:
    """The server's RFC 3339 time, nanoseconds cut to what datetime holds."""
    if not stamp:
        return None
    whole, _, fraction = stamp.rstrip("Z").partition(".")
    with contextlib.suppress(ValueError):
        return datetime.fromisoformat(f"{whole}.{(fraction + '000000')[:6]}+00:00")
    return None
