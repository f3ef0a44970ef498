"""QoS 2 claims (app/qos/claims.py) in a JetStream KV bucket per service, `<service>_processed`."""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.errors import BadRequestError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from app.brokers.kv import TRANSIENT, open_bucket, retrying, safe_key
from app.errors import StoreUnavailableError
from app.qos.claims import DONE, Claim, ClaimBusy, decide, processing_value, renewed_value
from app.qos.retries import RetryBudget
from app.settings import Settings

_WRONG_REVISION = (10071, 10164)  # JetStream: wrong last sequence (per subject)
_CLAIM_TRIES = 3


def bucket_name(settings: Settings) -> str:
    return f"{settings.service_name.replace('-', '_')}_processed"


class KvClaimStore:
    """A JetStream KV bucket per service; keys expire with the bucket's TTL."""

    def __init__(self, kv: KeyValue, budget: RetryBudget) -> None:
        self._kv = kv
        self._budget = budget

    @classmethod
    async def open(cls, js: JetStreamContext, settings: Settings) -> KvClaimStore:
        ttl = max(settings.idempotency_ttl, settings.duplicate_window)
        kv = await open_bucket(js, bucket_name(settings), ttl=ttl, replicas=settings.replicas)
        return cls(kv, RetryBudget.from_settings(settings))

    async def claim(self, key: str, stale_after: float) -> Claim | None:
        try:
            return await self._claim(safe_key(key), stale_after)
        except TRANSIENT as exc:  # no responders while a leader is elected, a timeout
            raise StoreUnavailableError(f"idempotency store: {type(exc).__name__} {exc}") from exc

    async def _claim(self, kv_key: str, stale_after: float) -> Claim | None:
        for _ in range(_CLAIM_TRIES):
            value = processing_value()
            try:
                revision = await self._kv.create(kv_key, value.encode())
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
                revision = await self._kv.update(kv_key, value.encode(), last=entry.revision)
                return Claim(kv_key, value, revision)
            except KeyWrongLastSequenceError:
                continue
        raise ClaimBusy("claim kept changing under us")

    async def complete(self, claim: Claim) -> None:
        """Retried within the publish budget: the effect is applied, "done" must be kept."""
        await retrying(lambda: self._complete(claim), self._budget, "idempotency mark")

    async def _complete(self, claim: Claim) -> None:
        # Unconditional on purpose: whoever holds the claim now, this delivery's effect is
        # applied, so "done" is what the key must say (a compare first would only cost a
        # per-subject lookup on the server for the same end).
        await self._kv.put(claim.key, DONE.encode())

    async def refresh(self, claim: Claim) -> Claim | None:
        value = renewed_value(claim.value)
        try:
            revision = await self._kv.update(claim.key, value.encode(), last=claim.revision)
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
