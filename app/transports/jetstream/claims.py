"""QoS 2 claims (app/qos/claims.py) in a JetStream KV bucket per service, `<service>_processed`."""

from __future__ import annotations

import math
import secrets

from nats.js import JetStreamContext
from nats.js.errors import APIError, BadRequestError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from app.brokers.kv import TRANSIENT, open_bucket, retrying, safe_key
from app.errors import StoreUnavailableError
from app.qos.claims import CLAIMED, DONE, Claim, ClaimBusy, decide
from app.qos.retries import RetryBudget
from app.settings import Settings

_WRONG_REVISION = (10071, 10164)  # JetStream: wrong last sequence (per subject)
_CLAIM_TRIES = 3


def bucket_name(settings: Settings) -> str:
    return f"{settings.service_name.replace('-', '_')}_processed"


class KvClaimStore:
    """A JetStream KV bucket per service: a done mark expires with the bucket's TTL, a claim in
    progress with its own (the stale time)."""

    def __init__(
        self, kv: KeyValue, budget: RetryBudget, js: JetStreamContext, bucket: str
    ) -> None:
        self._kv = kv
        self._budget = budget
        self._js = js
        self._prefix = f"$KV.{bucket}."

    @classmethod
    async def open(cls, js: JetStreamContext, settings: Settings) -> KvClaimStore:
        ttl = max(settings.idempotency_ttl, settings.duplicate_window)
        name = bucket_name(settings)
        kv = await open_bucket(js, name, ttl=ttl, replicas=settings.replicas)
        config = (await js.stream_info(f"KV_{name}")).config
        if not config.allow_msg_ttl:  # a bucket of an older version: claims get their own TTL
            config.allow_msg_ttl = True
            await js.update_stream(config)
        return cls(kv, RetryBudget.from_settings(settings), js, name)

    async def claim(self, key: str, stale_after: float) -> Claim | None:
        try:
            return await self._claim(safe_key(key), stale_after)
        except TRANSIENT as exc:  # no responders while a leader is elected, a timeout
            raise StoreUnavailableError(f"idempotency store: {type(exc).__name__} {exc}") from exc

    async def _claim(self, kv_key: str, stale_after: float) -> Claim | None:
        # A claim in progress carries its own TTL, the stale time: the server drops it once its
        # holder stops renewing, by the server's clock; no host's clock is compared.
        lives = max(1, math.ceil(stale_after))
        for _ in range(_CLAIM_TRIES):
            value = f"{CLAIMED} {lives} {secrets.token_hex(8)}"
            try:
                revision = await self._kv.create(kv_key, value.encode(), msg_ttl=lives)
                return Claim(kv_key, value, revision)
            except KeyWrongLastSequenceError:
                pass
            try:
                entry = await self._kv.get(kv_key)
            except KeyNotFoundError:
                continue  # released or expired meanwhile: claim it again
            if decide((entry.value or b"").decode(), stale_after) is False:
                return None
            try:
                revision = await self._replace(kv_key, value, entry.revision or 0, lives)
                return Claim(kv_key, value, revision)
            except KeyWrongLastSequenceError:
                continue
        raise ClaimBusy("claim kept changing under us")

    async def _replace(self, kv_key: str, value: str, last: int, lives: int) -> int:
        """The key's value replaced if its revision is `last`, with its own TTL (nats-py's
        `KeyValue.update` takes none): KeyWrongLastSequenceError when another write came first."""
        try:
            ack = await self._js.publish(
                self._prefix + kv_key,
                value.encode(),
                headers={"Nats-Expected-Last-Subject-Sequence": str(last)},
                msg_ttl=lives,
            )
        except APIError as exc:
            if exc.err_code in _WRONG_REVISION:
                raise KeyWrongLastSequenceError(description=exc.description) from exc
            raise
        return ack.seq

    async def complete(self, claim: Claim) -> None:
        """Retried within the publish budget: the effect is applied, "done" must be kept."""
        await retrying(lambda: self._complete(claim), self._budget, "idempotency mark")

    async def _complete(self, claim: Claim) -> None:
        # Unconditional on purpose: whoever holds the claim now, this delivery's effect is
        # applied, so "done" is what the key must say (a compare first would only cost a
        # per-subject lookup on the server for the same end).
        await self._kv.put(claim.key, DONE.encode())

    async def refresh(self, claim: Claim) -> Claim | None:
        value = claim.value  # "claimed <TTL> <token>": written again, its TTL starts again
        lives = int(value.split(" ")[1])
        try:
            revision = await self._replace(claim.key, value, claim.revision, lives)
        except KeyWrongLastSequenceError:
            return None
        return Claim(claim.key, value, revision)

    async def release(self, claim: Claim) -> None:
        # Only while the claim is still ours: never another holder's claim or done mark.
        try:
            await self._kv.delete(claim.key, last=claim.revision)
        except BadRequestError as exc:
            # nats-py names the conflict on update, not on delete: the server's codes say it.
            if exc.err_code not in _WRONG_REVISION:
                raise
