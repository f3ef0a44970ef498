"""JetStream KV buckets: safe keys, idempotent bucket set-up, retries within the publish budget,
and `Bucket`, whose hot operations (get, create, update) skip nats-py's per-call overhead."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import (
    APIError,
    BadRequestError,
    BucketNotFoundError,
    KeyWrongLastSequenceError,
    NoStreamResponseError,
    NotFoundError,
    ServiceUnavailableError,
)
from nats.js.kv import KeyValue

from app.brokers.nats_wire import JETSTREAM_MAX_HEADERS
from app.brokers.replies import Replies
from app.qos.retries import RetryBudget, with_retries

log = logging.getLogger(__name__)

T = TypeVar("T")

_VALID_KEY = re.compile(r"^[-/_=a-zA-Z0-9]+(\.[-/_=a-zA-Z0-9]+)*$")
_MAX_PLAIN_KEY = 200


def safe_key(raw: str) -> str:
    """`raw` when it is a valid KV key token, else a stable hash of it (never an error)."""
    if len(raw) <= _MAX_PLAIN_KEY and _VALID_KEY.match(raw):
        return raw
    return "h_" + hashlib.sha256(raw.encode()).hexdigest()


async def open_bucket(
    js: JetStreamContext, bucket: str, *, ttl: float | None, replicas: int, history: int = 1
) -> KeyValue:
    """Open `bucket`, creating it on file storage when missing; an existing bucket keeps its
    config (another instance made it, and rewriting it under running peers is not ours to do)."""
    try:
        return await js.key_value(bucket)
    except BucketNotFoundError:
        pass
    config = KeyValueConfig(
        bucket=bucket,
        history=history,
        ttl=ttl,
        storage=StorageType.FILE,
        replicas=replicas,
        direct=True,  # reads by direct get, as the NATS Go client makes its buckets
    )
    try:
        return await js.create_key_value(config=config)
    except BadRequestError:
        return await js.key_value(bucket)


# Broker trouble worth another try: no answer, no leader (an election), connection churn.
# Logic errors (wrong revision, key not found) are not among them.
TRANSIENT: tuple[type[BaseException], ...] = (
    nats.errors.ConnectionReconnectingError,
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.ConnectionClosedError,
    nats.errors.OutboundBufferLimitError,
    ServiceUnavailableError,
    NoStreamResponseError,
    TimeoutError,
)


async def retrying_timed(op: Callable[[float], Awaitable[T]], budget: RetryBudget, what: str) -> T:
    """`retrying` for an operation that bounds itself: `op(timeout)` raises TimeoutError when
    it is spent (as `Bucket`'s operations do), so no timer is armed around it."""
    result: list[T] = []

    async def attempt(_: int, timeout: float) -> None:
        result.append(await op(timeout))

    await with_retries(attempt, budget, TRANSIENT, "nats", what, operation=what)
    return result[0]


async def retrying(op: Callable[[], Awaitable[T]], budget: RetryBudget, what: str) -> T:
    """Run a KV operation within the publish retry budget, so a request rides through a
    leader election or a slow broker the same way a publish does, and fails with
    PublishError (503) when the budget is spent."""

    async def bounded(timeout: float) -> T:
        # asyncio.timeout, not wait_for: no extra task per KV call on the request path.
        async with asyncio.timeout(timeout):
            return await op()

    return await retrying_timed(bounded, budget, what)


# -- Bucket ------------------------------------------------------------------------------------

_EXPECTED_LAST = "Nats-Expected-Last-Subject-Sequence"
_TTL = "Nats-TTL"  # a value's own time to live (nats-server 2.11+, `allow_msg_ttl`)
_WRONG_LAST = (10071, 10164)  # the key's last revision is not the one expected
_NOT_FOUND = 10037  # no message
_REMOVED = (b"KV-Operation: DEL", b"KV-Operation: PURGE")


@dataclass(slots=True, frozen=True)
class Entry:
    value: bytes
    revision: int


class Bucket:
    """A KV bucket whose get, create and update go over one reply inbox, each with its own
    timeout: what `KeyValue` does, without a random inbox token, a timer and (for a bucket
    without direct gets) a base64 message and an email-parsed header block per call. About a
    third of the CPU of an order's handler went there (docs/performance.md). Everything else
    (put, delete, watch, keys) is on `kv`, the nats-py bucket.
    """

    def __init__(self, nc: NatsClient, kv: KeyValue, name: str, direct: bool) -> None:
        self.kv = kv
        self._nc = nc
        self._replies = Replies(nc, _no_reply)
        self._stream = f"KV_{name}"
        self._prefix = f"$KV.{name}."
        self._direct = direct
        self._js: JetStreamContext | None = None  # set by `open`: for the bucket's own config
        self._made_as: dict[str, Any] = {}  # `open`'s settings, to make the bucket again
        self._keys_for = 0.0  # the longest `keep_keys_for`

    @classmethod
    async def open(
        cls,
        nc: NatsClient,
        js: JetStreamContext,
        name: str,
        *,
        ttl: float | None,
        replicas: int,
        history: int = 1,
    ) -> Bucket:
        kv = await open_bucket(js, name, ttl=ttl, replicas=replicas, history=history)
        direct = bool((await js.stream_info(f"KV_{name}")).config.allow_direct)
        bucket = cls(nc, kv, name, direct)
        bucket._js = js
        bucket._made_as = {"ttl": ttl, "replicas": replicas, "history": history}
        return bucket

    async def make_again_if_gone(self) -> bool:
        """Make the bucket again, as it was opened (and with the key TTLs it was asked to
        keep), when the server says it no longer exists: deleted by hand, or a cluster
        restored from scratch. Whether it was gone."""
        try:
            await self.js.stream_info(self._stream)
            return False
        except NotFoundError:
            pass
        name = self._stream.removeprefix("KV_")
        log.warning("KV bucket %s is gone: making it again", name)
        self.kv = await open_bucket(self.js, name, **self._made_as)
        self._direct = bool((await self.js.stream_info(self._stream)).config.allow_direct)
        if self._keys_for:
            await self.keep_keys_for(self._keys_for)
        return True

    @property
    def js(self) -> JetStreamContext:
        if self._js is None:
            raise RuntimeError("a Bucket made without `open` cannot read its own config")
        return self._js

    async def keep_keys_for(self, ttl: float) -> None:
        """Let keys carry their own TTL, and make sure the bucket keeps a key at least `ttl`
        seconds: an older bucket's max age is raised in place, never lowered (an instance with
        a shorter TTL still counts on its keys living as long as it thinks)."""
        self._keys_for = max(self._keys_for, ttl)
        config = (await self.js.stream_info(self._stream)).config
        raised = bool(config.max_age) and (config.max_age or 0) < ttl
        if config.allow_msg_ttl and not raised:
            return
        if raised:
            log.warning(
                "KV bucket %s kept keys %g s, less than this instance's %g s: raised to %g s",
                self._stream.removeprefix("KV_"),
                config.max_age,
                ttl,
                ttl,
            )
            config.max_age = ttl
        config.allow_msg_ttl = True
        await self.js.update_stream(config)

    async def created(self) -> datetime:
        """When the server created the bucket (its stream): a bucket deleted and made again
        has a later one."""
        info = await self.js.stream_info(self._stream)
        return info.created or datetime.now(UTC)

    async def _request(
        self,
        subject: str,
        body: bytes,
        headers: dict[str, str],
        timeout: float,
        max_headers: int = 0,
    ) -> Msg:
        """One request; while the connection is reconnecting it waits for it, within
        `timeout` (ConnectionReconnectingError after), as nats-py's own requests do, without
        leaving a frame in nats-py's buffer to be sent after the caller has given up."""
        if not self._nc.is_connected:
            deadline = time.monotonic() + timeout
            while not self._nc.is_connected:
                left = deadline - time.monotonic()
                if left <= 0 or self._nc.is_closed:
                    raise nats.errors.ConnectionReconnectingError
                await asyncio.sleep(min(RECONNECT_POLL, left))
            timeout = max(0.0, deadline - time.monotonic())
        return await self._replies.request(subject, body, headers, timeout, max_headers)

    async def get(self, key: str, timeout: float) -> Entry | None:
        """The key's value and revision; None when it has none (never written, or deleted)."""
        entry, _ = await self._read(key, timeout)
        return entry

    async def _read(self, key: str, timeout: float) -> tuple[Entry | None, int]:
        """The key's entry (None: never written, or deleted) and its last revision, a deletion's
        included (0: never written)."""
        subject = self._prefix + key
        if self._direct:
            reply = await self._request(
                f"$JS.API.DIRECT.GET.{self._stream}.{subject}", b"", {}, timeout
            )
            headers = reply.headers or {}
            status = headers.get("Status")
            if status == "404":
                return None, 0
            if status is not None:
                raise _status_error(reply)
            revision = int(headers["Nats-Sequence"])
            if headers.get("KV-Operation") in ("DEL", "PURGE"):
                return None, revision
            return Entry(reply.data, revision), revision
        request = json.dumps({"last_by_subj": subject}).encode()
        reply = await self._request(f"$JS.API.STREAM.MSG.GET.{self._stream}", request, {}, timeout)
        answer = _json(reply)
        error = answer.get("error")
        if error is not None:
            if error.get("err_code") == _NOT_FOUND:
                return None, 0
            raise APIError.from_error(error)
        message = answer["message"]
        revision = int(message["seq"])
        block = base64.b64decode(message.get("hdrs") or "")
        if any(removed in block for removed in _REMOVED):
            return None, revision
        return Entry(base64.b64decode(message.get("data") or ""), revision), revision

    async def create(self, key: str, value: bytes, timeout: float, ttl: float | None = None) -> int:
        """Write the key's first value and return its revision; KeyWrongLastSequenceError
        when it has one already. `ttl`: the server removes this value that many seconds after
        it stored it (the bucket must allow per-key TTLs: `keep_keys_for`)."""
        try:
            return await self.update(key, value, 0, timeout, ttl)
        except KeyWrongLastSequenceError:
            entry, last = await self._read(key, timeout)
            if entry is not None:
                raise
        return await self.update(key, value, last, timeout, ttl)  # over the deletion's tombstone

    async def update(
        self, key: str, value: bytes, last: int, timeout: float, ttl: float | None = None
    ) -> int:
        """Write the key's value if its revision is `last` (0: it has none), returning the new
        revision; KeyWrongLastSequenceError when another write came first."""
        headers = {_EXPECTED_LAST: str(last)}
        if ttl is not None:
            headers[_TTL] = f"{math.ceil(ttl * 1000)}ms"
        reply = await self._request(
            self._prefix + key, value, headers, timeout, max_headers=JETSTREAM_MAX_HEADERS
        )
        ack = _json(reply)
        error = ack.get("error")
        if error is not None:
            if error.get("err_code") in _WRONG_LAST:
                raise KeyWrongLastSequenceError(description=error.get("description"))
            raise APIError.from_error(error)
        return int(ack["seq"])


RECONNECT_POLL = 0.05


def _json(reply: Msg) -> dict[str, Any]:
    if reply.headers and reply.headers.get("Status") == "503":
        raise nats.errors.NoRespondersError
    answer: dict[str, Any] = json.loads(reply.data)
    return answer


def _status_error(reply: Msg) -> Exception:
    headers = reply.headers or {}
    if headers.get("Status") == "503":
        return nats.errors.NoRespondersError()
    return APIError(code=int(headers.get("Status", 0)), description=headers.get("Description"))


def _no_reply() -> TimeoutError:
    return TimeoutError("no reply from the KV bucket in time")
