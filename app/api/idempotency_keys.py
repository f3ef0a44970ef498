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
from typing import Any, TypeVar

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.errors import KeyWrongLastSequenceError
from pydantic import BaseModel

from app.kv import Bucket, retrying, retrying_timed, safe_key
from app.retries import RetryBudget
from app.settings import Settings

M = TypeVar("M", bound=BaseModel)


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
    def __init__(self, bucket: Bucket, budget: RetryBudget) -> None:
        self._bucket = bucket
        self._budget = budget

    @classmethod
    async def open(
        cls, nc: NatsClient, js: JetStreamContext, settings: Settings
    ) -> IdempotencyKeys:
        name = f"{settings.service_name.replace('-', '_')}_http_keys"
        ttl, replicas = settings.idempotency_ttl, settings.replicas
        bucket = await Bucket.open(nc, js, name, ttl=ttl, replicas=replicas)
        return cls(bucket, RetryBudget.from_settings(settings))

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
            claim = partial(self._bucket.create, kv_key, value)
            try:
                await retrying_timed(claim, self._budget, "key claim")
                return record
            except KeyWrongLastSequenceError:
                pass
            lookup = partial(self._bucket.get, kv_key)
            entry = await retrying_timed(lookup, self._budget, "key lookup")
            if entry is None:
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
        await retrying(partial(self._bucket.kv.put, kv_key, value), self._budget, "key answer")

    async def command(
        self, scope: str, key: str | None, fp: str, plan: dict[str, str]
    ) -> KeyedCommand:
        """One command under `key` (None: the client sent none, so nothing is remembered)."""
        record = await self.begin(scope, key, fp, plan) if key is not None else None
        return KeyedCommand(self, scope, key, record, plan)


class KeyedCommand:
    """A command endpoint's view of its Idempotency-Key: the plan to carry out (the ids the
    first try chose), the stored answer when an earlier try finished, and `answer` to store
    this try's.

        command = await keys.command("POST /orders", key, fingerprint(body), plan)
        if command.replay is not None:
            return command.replay
        ...
        return await command.answer(202, accepted)
    """

    __slots__ = ("_key", "_keys", "_record", "_scope", "plan")

    def __init__(
        self,
        keys: IdempotencyKeys,
        scope: str,
        key: str | None,
        record: KeyedRequest | None,
        plan: dict[str, str],
    ) -> None:
        self._keys, self._scope, self._key, self._record = keys, scope, key, record
        self.plan = record.plan if record is not None else plan

    @property
    def keyed(self) -> bool:
        """Whether a key was given: a retry can come, and will carry out this plan again."""
        return self._record is not None

    @property
    def replay(self) -> JSONResponse | None:
        """The earlier try's answer, when there was one that finished."""
        record = self._record
        if record is None or not record.answered:
            return None
        return JSONResponse(record.response, status_code=record.status or 200)

    async def answer(self, status: int, body: M) -> M:
        """Remember `body` as the answer to every repeat of this request; return it."""
        if self._record is not None and self._key is not None:
            await self._keys.finish(self._scope, self._key, self._record, status, body.model_dump())
        return body
