"""HTTP `Idempotency-Key` support for command endpoints, shared by every instance through a
JetStream KV bucket and kept for APP_IDEMPOTENCY_TTL seconds.

A first request stores its plan (the ids it will use) before doing anything; a repeat with the
same request gets the stored answer, or, when the first attempt did not finish (a 503), the same
plan again, so a retry republishes the same message id and the broker drops a second copy.
A repeat with the same key and a different request is a conflict (409).
"""

from __future__ import annotations

import hashlib
import json
from functools import partial
from typing import Any

from fastapi import HTTPException
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from pydantic import BaseModel

from app.kv import open_bucket, retrying, safe_key
from app.settings import Settings
from app.transports.retry import RetryBudget


class KeyedRequest(BaseModel):
    """What is stored under one Idempotency-Key."""

    fingerprint: str
    plan: dict[str, str]
    status: int | None = None
    response: dict[str, Any] | None = None

    @property
    def answered(self) -> bool:
        return self.status is not None


def fingerprint(*parts: Any) -> str:
    """A stable hash of the request: path parameters and body."""
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


class IdempotencyKeys:
    def __init__(self, kv: KeyValue, budget: RetryBudget) -> None:
        self._kv = kv
        self._budget = budget

    @classmethod
    async def open(cls, js: JetStreamContext, settings: Settings) -> IdempotencyKeys:
        bucket = f"{settings.service_name.replace('-', '_')}_http_keys"
        kv = await open_bucket(js, bucket, ttl=settings.idempotency_ttl, replicas=settings.replicas)
        return cls(kv, RetryBudget.from_settings(settings))

    @staticmethod
    def _key(scope: str, key: str) -> str:
        return safe_key(f"{scope}.{key}")

    async def begin(self, scope: str, key: str, fp: str, plan: dict[str, str]) -> KeyedRequest:
        """The record for `key`: new with `plan`, or the earlier one for the same request.

        Raises HTTPException(409) when the key was used for a different request.
        """
        kv_key = self._key(scope, key)
        record = KeyedRequest(fingerprint=fp, plan=plan)
        for _ in range(3):
            value = record.model_dump_json().encode()
            try:
                await retrying(partial(self._kv.create, kv_key, value), self._budget, "key claim")
                return record
            except KeyWrongLastSequenceError:
                pass
            try:
                entry = await retrying(lambda: self._kv.get(kv_key), self._budget, "key lookup")
            except KeyNotFoundError:
                continue  # expired between the two calls: try to claim it again
            earlier = KeyedRequest.model_validate_json(entry.value or b"{}")
            if earlier.fingerprint != fp:
                raise HTTPException(409, "Idempotency-Key was already used for a different request")
            return earlier
        raise HTTPException(409, "Idempotency-Key is being claimed concurrently; retry")

    async def finish(
        self, scope: str, key: str, record: KeyedRequest, status: int, body: dict[str, Any]
    ) -> None:
        """Store the answer, so repeats get it without doing the work again."""
        done = record.model_copy(update={"status": status, "response": body})
        value, kv_key = done.model_dump_json().encode(), self._key(scope, key)
        await retrying(lambda: self._kv.put(kv_key, value), self._budget, "key answer")
