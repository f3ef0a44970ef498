"""Fencing: a record that only the current holder of a lease can write. It keeps the largest
lease token it has seen and refuses a write with a smaller one, so a holder that paused past its
TTL and wakes believing it still holds the lease cannot overwrite its successor's work."""

from __future__ import annotations

import json
from typing import Any

from nats.js.errors import KeyWrongLastSequenceError

from app.brokers.kv import Bucket, safe_key
from app.coordination.leases import REQUEST_TIMEOUT
from app.errors import StaleTokenError


class FencedRecord:
    """A KV record written only with the current lease's token: it keeps the largest token it
    has seen, and refuses a write whose token is smaller (StaleTokenError)."""

    def __init__(self, bucket: Bucket, key: str) -> None:
        self._bucket = bucket
        self._key = safe_key(key)

    async def read(self) -> tuple[int, Any] | None:
        entry = await self._bucket.get(self._key, REQUEST_TIMEOUT)
        if entry is None:
            return None
        record = json.loads(entry.value)
        return int(record["token"]), record["value"]

    async def write(self, token: int, value: Any) -> int:
        """Write `value` with `token`; the record's new revision. StaleTokenError when the
        record holds a newer token."""
        body = json.dumps({"token": token, "value": value}).encode()
        while True:
            entry = await self._bucket.get(self._key, REQUEST_TIMEOUT)
            if entry is not None and token < int(json.loads(entry.value)["token"]):
                raise StaleTokenError(f"token {token} is older than the record's")
            try:
                last = entry.revision if entry is not None else 0
                return await self._bucket.update(self._key, body, last, REQUEST_TIMEOUT)
            except KeyWrongLastSequenceError:
                continue  # written meanwhile: look at its token again
