"""Small helpers for JetStream KV buckets: safe keys and idempotent bucket set-up."""

from __future__ import annotations

import hashlib
import re

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BadRequestError, BucketNotFoundError
from nats.js.kv import KeyValue

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
    )
    try:
        return await js.create_key_value(config=config)
    except BadRequestError:
        return await js.key_value(bucket)
