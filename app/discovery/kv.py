"""Discovery on a JetStream KV bucket: register with a put, heartbeat by re-putting, leave with
a delete, and watch every key to keep the local view equal to the bucket.

Crashes show up as expiry markers (nats-server >= 2.11) or, on buckets without markers, by a
local sweep of nodes not heard of for a TTL. After a reconnect the watch is re-created and the
view rebuilt from the new snapshot, so nothing that happened during the outage is missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from nats.js.errors import KeyNotFoundError
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from app import __version__
from app.brokers import Brokers
from app.discovery.bucket import Bucket, open_discovery_bucket
from app.discovery.models import BadNodeValue, NodeInfo, decode_node, new_node_id, now
from app.discovery.view import NodeView, ViewSubscription
from app.errors import DiscoveryError
from app.settings import Settings

log = logging.getLogger(__name__)

SWEEP_INTERVAL = 0.25
CONFIRM_SLACK = 1.5  # heartbeat intervals without a confirmed put: the broker is frozen
ECHO_BEATS = 3  # confirmed heartbeats of our own not seen on the watch: it has stalled
RETRY_DELAYS = (0.1, 0.2, 0.5, 1.0)


def _retry_delay(attempt: int) -> float:
    return RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)]


class KvDiscovery:
    """The `Discovery` Protocol on the shared KV bucket; use it through `open_discovery`."""

    def __init__(
        self,
        brokers: Brokers,
        settings: Settings,
        *,
        limit_markers: bool = True,
        node_id: str | None = None,
    ) -> None:
        started = now()
        self._brokers = brokers
        self._settings = settings
        self._limit_markers = limit_markers
        self._info = NodeInfo(
            node_id=node_id or new_node_id(),
            service=settings.service_name,
            version=__version__,
            address=settings.public_url,
            started_at=started,
            last_seen=started,
        )
        self._view = NodeView()
        self._bucket: Bucket | None = None
        self._watcher: KeyValue.KeyWatcher | None = None
        self._last_heard: dict[str, float] = {}
        self._confirmed_at: float | None = None
        self._echoed_at: float | None = None  # our own put last seen through the watch
        self._write_lock = asyncio.Lock()
        self._beat_now = asyncio.Event()
        self._resync_needed = False
        self._reconnects_seen = 0
        self._leaving = False
        self._closed = False
        self._tasks: list[asyncio.Task[None]] = []

    # -- the Discovery Protocol ---------------------------------------------------------------

    @property
    def self_info(self) -> NodeInfo:
        return self._info

    @property
    def ttl(self) -> float:
        return self._require_bucket().ttl

    @property
    def limit_markers(self) -> bool:
        return self._require_bucket().limit_markers

    @property
    def heartbeat_seconds(self) -> float:
        configured = self._settings.heartbeat_interval
        return configured if configured and configured < self.ttl else self.ttl / 3

    def nodes(self, service: str | None = None) -> list[NodeInfo]:
        return self._view.nodes(service)

    def get(self, node_id: str) -> NodeInfo | None:
        return self._view.get(node_id)

    def subscribe(self) -> ViewSubscription:
        return self._view.subscribe()

    async def readiness(self) -> dict[str, str]:
        confirmed = self._confirmed_at
        registered = (
            not self._leaving and confirmed is not None and time.monotonic() - confirmed < self.ttl
        )
        return {"discovery": "ok" if registered else "not_registered"}

    async def set_metadata(self, metadata: dict[str, str]) -> None:
        self._info = self._info.model_copy(update={"metadata": dict(metadata)})
        if not self._leaving and not await self._put(deadline=self.ttl):
            raise DiscoveryError("metadata not confirmed by the broker within the node TTL")

    async def deregister(self) -> None:
        if self._leaving or self._bucket is None:
            return
        self._leaving = True
        self._beat_now.set()
        async with self._write_lock:
            self._confirmed_at = None
            try:
                await asyncio.wait_for(self._bucket.kv.delete(self._info.key), timeout=2.0)
            except Exception as exc:
                raise DiscoveryError(
                    f"deregistration failed ({exc!r}): peers drop this node after the TTL"
                ) from exc
        log.info("deregistered %s", self._info.key)

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the bucket, register, load the current nodes and follow every change."""
        deadline = time.monotonic() + self._settings.nats_connect_timeout
        attempt = 0
        while True:
            try:
                await self._open()
                break
            except Exception as exc:
                if time.monotonic() > deadline:
                    raise DiscoveryError(f"cannot join {self._settings.discovery_bucket}") from exc
                log.warning("discovery start failed, retrying: %r", exc)
                await asyncio.sleep(_retry_delay(attempt))
                attempt += 1
        self._spawn(self._heartbeat())
        self._spawn(self._follow())
        self._spawn(self._sweep())
        self._brokers.on_reconnect(self._on_reconnect)

    async def _open(self) -> None:
        nc, js = self._brokers.nc, self._brokers.js
        self._bucket = await open_discovery_bucket(
            nc, js, self._settings, limit_markers=self._limit_markers
        )
        mode = "limit markers" if self._bucket.limit_markers else "local sweep"
        log.info(
            "discovery: bucket %s, ttl %ss, heartbeat every %.2fs, crash detection by %s "
            "(nats-server %s)",
            self._settings.discovery_bucket,
            self.ttl,
            self.heartbeat_seconds,
            mode,
            ".".join(
                str(part)
                for part in (
                    nc.connected_server_version.major,
                    nc.connected_server_version.minor,
                    nc.connected_server_version.patch,
                )
            ),
            extra={"node_id": self._info.node_id},
        )
        self._reconnects_seen = nc.stats["reconnects"]
        await self._register_and_watch()

    async def close(self) -> None:
        """Deregister (peers see a graceful leave), then stop following the bucket."""
        try:
            await self.deregister()
        except DiscoveryError as exc:
            log.warning("%s", exc)
        self._closed = True
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2)
        await self._stop_watcher()
        self._view.close()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self._tasks = [task for task in self._tasks if not task.done()]
        self._tasks.append(asyncio.create_task(coro))

    def _require_bucket(self) -> Bucket:
        if self._bucket is None:
            raise DiscoveryError("discovery is not started")
        return self._bucket

    # -- writing this node --------------------------------------------------------------------

    async def _put(self, deadline: float | None = None) -> bool:
        """Put this node until the broker confirms it, or `deadline` seconds pass; never gives
        up by itself (a failed heartbeat is retried, it is not a leave)."""
        kv = self._require_bucket().kv
        timeout = min(1.0, self.heartbeat_seconds)
        give_up = None if deadline is None else time.monotonic() + deadline
        attempt = 0
        while not self._leaving:
            async with self._write_lock:
                if self._leaving:
                    return False
                self._info = self._info.model_copy(update={"last_seen": now()})
                try:
                    await asyncio.wait_for(kv.put(self._info.key, self._info.to_json()), timeout)
                except Exception as exc:
                    if attempt == 0:
                        log.warning("discovery heartbeat failed, retrying: %r", exc)
                else:
                    if attempt:
                        log.info("discovery heartbeat confirmed after %d retries", attempt)
                    self._confirmed_at = time.monotonic()
                    return True
            if give_up is not None and time.monotonic() > give_up:
                return False
            await asyncio.sleep(_retry_delay(attempt))
            attempt += 1
        return False

    async def _heartbeat(self) -> None:
        while not self._leaving:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._beat_now.wait(), self.heartbeat_seconds)
            self._beat_now.clear()
            if await self._put() and self._watch_stalled():
                log.warning(
                    "discovery watch stalled: this node's confirmed heartbeats stopped coming "
                    "back through it; watching again"
                )
                await self._restart_watch()

    def _watch_stalled(self) -> bool:
        """Whether the broker confirmed several of our heartbeats that the watch never brought
        back: its consumer is gone and the client was not told (a lost reset of nats-py's
        ordered consumer), so nothing more would ever arrive on it."""
        confirmed, echoed = self._confirmed_at, self._echoed_at
        return (
            self._watcher is not None
            and not self._resync_needed
            and confirmed is not None
            and echoed is not None
            and confirmed - echoed > self.heartbeat_seconds * ECHO_BEATS
        )

    # -- following the bucket -----------------------------------------------------------------

    async def _register_and_watch(self, grace: bool = False) -> None:
        """Put this node, then replace the view with a fresh snapshot of the bucket and keep
        its watcher: the snapshot and the live updates that follow it leave no gap.

        With `grace` (after a reconnect) a known node missing from the snapshot gets one
        heartbeat and its retries to put itself again before it counts as expired: after a
        long outage every peer re-registers at about the same time as this one, and one that
        lost that race has not left.
        """
        if not self._leaving and not await self._put(deadline=self.ttl):
            raise DiscoveryError("registration not confirmed by the broker")
        kv = self._require_bucket().kv
        await self._stop_watcher()
        watcher = await asyncio.wait_for(kv.watchall(), timeout=5)
        self._watcher = watcher
        snapshot: dict[str, NodeInfo] = {}
        written: dict[str, datetime] = {}
        async with asyncio.timeout(10):
            async for entry in watcher:
                if entry is None:
                    break
                node = self._decode(entry)
                if node is None:
                    snapshot.pop(entry.key, None)
                    written.pop(entry.key, None)
                    continue
                snapshot[entry.key] = node
                if isinstance(entry.created, datetime):
                    written[entry.key] = entry.created
            else:
                raise DiscoveryError("watch stopped while loading the snapshot")
        self._last_heard = self._ages(snapshot, written)
        self._echoed_at = time.monotonic()
        missing = [key for key in self._view.known_keys() if key not in snapshot] if grace else []
        self._view.replace(snapshot, keep=missing)
        if missing:
            self._spawn(self._expire_unless_heard(missing))

    async def _expire_unless_heard(self, keys: list[str]) -> None:
        await asyncio.sleep(self.heartbeat_seconds + RETRY_DELAYS[-1])
        for key in keys:
            if key not in self._last_heard:
                self._view.remove(key, "expired")

    async def _follow(self) -> None:
        """Apply every live update; when the watcher ends (a reconnect stops it), resync."""
        while not self._closed:
            watcher = self._watcher
            if watcher is not None and not self._resync_needed:
                async for entry in watcher:
                    if entry is not None:
                        self._apply(entry)
            if not self._closed:
                await self._resync()

    async def _resync(self) -> None:
        attempt = 0
        while not self._closed:
            self._resync_needed = False
            self._reconnects_seen = self._brokers.nc.stats["reconnects"]
            try:
                await self._register_and_watch(grace=True)
            except Exception as exc:
                log.warning("discovery resync failed, retrying: %r", exc)
                await asyncio.sleep(_retry_delay(attempt))
                attempt += 1
                continue
            if not self._resync_needed:
                log.info("discovery resynced: %d nodes", len(self._view.nodes()))
                return

    async def _on_reconnect(self) -> None:
        await self._restart_watch()

    async def _restart_watch(self) -> None:
        """End the current watch; `_follow` then resyncs from a fresh snapshot."""
        if self._closed:
            return
        self._resync_needed = True
        await self._stop_watcher()

    async def _stop_watcher(self) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]

    def _apply(self, entry: KeyValue.Entry) -> None:
        if entry.operation in (KV_DEL, KV_PURGE):
            self._last_heard.pop(entry.key, None)
            self._view.remove(entry.key, "graceful" if entry.operation == KV_DEL else "expired")
            if entry.key == self._info.key and not self._leaving:
                log.warning("this node's registration vanished: registering again")
                self._beat_now.set()
            return
        node = self._decode(entry)
        if node is not None:
            self._last_heard[entry.key] = time.monotonic()
            if entry.key == self._info.key:
                self._echoed_at = self._last_heard[entry.key]
            self._view.put(node)

    def _decode(self, entry: KeyValue.Entry) -> NodeInfo | None:
        if entry.operation in (KV_DEL, KV_PURGE):
            return None
        try:
            return decode_node(entry.key, entry.value)
        except BadNodeValue as exc:
            log.warning("discovery: skipping bad value under %r: %s", entry.key, exc)
            return None

    def _ages(
        self, snapshot: dict[str, NodeInfo], written: dict[str, datetime]
    ) -> dict[str, float]:
        """When each node of a snapshot was last heard of, on this host's monotonic clock.

        Ages come from the server's timestamps alone: measured against the newest of them
        (this node's own registration, written just before the watch began), never against
        this host's wall clock, so a host whose clock is off makes nobody look old."""
        reference = max(written.values(), default=None)
        heard_now = time.monotonic()
        heard: dict[str, float] = {}
        for key in snapshot:
            created = written.get(key)
            age = (reference - created).total_seconds() if reference and created else 0.0
            heard[key] = heard_now - min(max(age, 0.0), self.ttl)
        return heard

    # -- the sweep fallback -------------------------------------------------------------------

    async def _sweep(self) -> None:
        """Drop nodes not heard of for a TTL; paused while the broker is away, frozen or a
        resync is pending, since silence then says nothing about the peers. The broker counts
        as frozen when it has not confirmed this node's own heartbeat within about one
        interval (a SIGSTOPped server keeps its connections open). After a pause every node
        gets a fresh TTL: their heartbeats were as stuck as ours.

        With limit markers the server's marker drops a node at its TTL, and the sweep is only
        the backstop for a marker that never comes (a stream leader that changed as the key
        expired, a purge): it asks the bucket (`_drop_unmarked`)."""
        nc = self._brokers.nc
        paused = False
        while not self._closed:
            await asyncio.sleep(SWEEP_INTERVAL)
            confirmed = self._confirmed_at
            if (
                not nc.is_connected
                or self._resync_needed
                or nc.stats["reconnects"] != self._reconnects_seen
                or confirmed is None
                or time.monotonic() - confirmed > self.heartbeat_seconds * CONFIRM_SLACK
            ):
                paused = True
                continue
            if self.limit_markers:
                paused = False
                await self._drop_unmarked()
                continue
            if paused:
                paused = False
                resumed = time.monotonic()
                for key in self._last_heard:
                    self._last_heard[key] = resumed
                continue
            cutoff = time.monotonic() - self.ttl
            for key, heard in list(self._last_heard.items()):
                if heard < cutoff and key != self._info.key:
                    del self._last_heard[key]
                    self._view.remove(key, "expired")

    async def _drop_unmarked(self) -> None:
        """A node silent for a TTL whose key the bucket no longer holds has expired, and its
        marker is not coming: drop it now. The bucket decides, so a silent node whose key is
        still there (not expired yet, or alive) stays; a broker that does not answer leaves
        everything for the next round."""
        cutoff = time.monotonic() - self.ttl
        kv = self._require_bucket().kv
        for key, heard in list(self._last_heard.items()):
            if heard >= cutoff or key == self._info.key:
                continue
            try:
                await asyncio.wait_for(kv.get(key), timeout=min(1.0, self.heartbeat_seconds))
            except KeyNotFoundError:  # expired or deleted (KeyDeletedError is one)
                if self._last_heard.get(key) == heard:  # not heard of meanwhile
                    del self._last_heard[key]
                    log.warning("no expiry marker came for %s: its key is gone, dropped", key)
                    self._view.remove(key, "expired")
            except Exception:
                return


@asynccontextmanager
async def open_discovery(
    brokers: Brokers, settings: Settings, **options: Any
) -> AsyncIterator[KvDiscovery]:
    """Join the environment's bucket for the life of the context; leave gracefully on exit."""
    discovery = KvDiscovery(brokers, settings, **options)
    await discovery.start()
    try:
        yield discovery
    finally:
        await discovery.close()
