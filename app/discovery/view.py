"""The local view of live nodes, the events its changes produce, and their subscribers.

Both implementations feed it: a value written turns into a join or an update, a key gone into a
leave, a fresh snapshot into the difference from what was known.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections import Counter
from collections.abc import AsyncIterator, Collection, Iterable, Mapping

from opentelemetry.metrics import CallbackOptions, Observation

from app.discovery.base import LeaveReason, NodeEvent, NodeJoined, NodeLeft, NodeUpdated
from app.discovery.models import NodeInfo
from app.observability.instruments import discovery_events, meter

log = logging.getLogger(__name__)

SUBSCRIBER_BACKLOG = 1024
"""Events a subscriber may fall behind before it is cut off (it can subscribe again)."""


class ViewSubscription:
    """One subscriber's queue of events; iterating ends when it is closed."""

    def __init__(self, view: NodeView) -> None:
        self._view = view
        self._queue: asyncio.Queue[NodeEvent | None] = asyncio.Queue()
        self._closed = False

    def offer(self, event: NodeEvent) -> None:
        if self._closed:
            return
        if self._queue.qsize() >= SUBSCRIBER_BACKLOG:
            log.warning("discovery subscriber fell %d events behind: closed", SUBSCRIBER_BACKLOG)
            self.close()
            return
        self._queue.put_nowait(event)

    async def __aiter__(self) -> AsyncIterator[NodeEvent]:
        while (event := await self._queue.get()) is not None:
            yield event

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._view.unsubscribe(self)
            self._queue.put_nowait(None)


class NodeView:
    """Live nodes by KV key (`<service>.<node_id>`), with change events for subscribers."""

    def __init__(self) -> None:
        self._nodes: dict[str, NodeInfo] = {}
        self._subscribers: set[ViewSubscription] = set()
        _views.add(self)

    def nodes(self, service: str | None = None) -> list[NodeInfo]:
        return [
            node
            for _key, node in sorted(self._nodes.items())
            if service is None or node.service == service
        ]

    def get(self, node_id: str) -> NodeInfo | None:
        return next((node for node in self._nodes.values() if node.node_id == node_id), None)

    def known_keys(self) -> list[str]:
        return list(self._nodes)

    def put(self, node: NodeInfo) -> None:
        old = self._nodes.get(node.key)
        self._nodes[node.key] = node
        if old is None:
            self._emit(NodeJoined(node))
        elif not old.same_apart_from_last_seen(node):
            self._emit(NodeUpdated(node))

    def remove(self, key: str, reason: LeaveReason) -> None:
        node = self._nodes.pop(key, None)
        if node is not None:
            self._emit(NodeLeft(node, reason))

    def replace(self, snapshot: Mapping[str, NodeInfo], keep: Collection[str] = ()) -> None:
        """Become `snapshot`: what is missing from it expired meanwhile, except the keys in
        `keep`; the rest is a put."""
        for key in [key for key in self._nodes if key not in snapshot and key not in keep]:
            self.remove(key, "expired")
        for node in snapshot.values():
            self.put(node)

    def subscribe(self) -> ViewSubscription:
        subscription = ViewSubscription(self)
        for node in self.nodes():
            subscription.offer(NodeJoined(node))
        self._subscribers.add(subscription)
        return subscription

    def unsubscribe(self, subscription: ViewSubscription) -> None:
        self._subscribers.discard(subscription)

    def close(self) -> None:
        for subscription in list(self._subscribers):
            subscription.close()

    def _emit(self, event: NodeEvent) -> None:
        attributes = {"type": event.kind, "service": event.node.service}
        if event.reason is not None:
            attributes["reason"] = event.reason
        discovery_events.add(1, attributes)
        log.info(
            "node %s: %s",
            event.kind,
            event.node.key,
            extra={"node_id": event.node.node_id, "reason": event.reason},
        )
        for subscription in list(self._subscribers):
            subscription.offer(event)


_views: weakref.WeakSet[NodeView] = weakref.WeakSet()


def _observe_nodes(_options: CallbackOptions) -> Iterable[Observation]:
    """Live nodes by service, as this process sees them (the largest view when a test runs
    several instances in one process)."""
    counts: Counter[str] = Counter()
    for view in list(_views):
        for service, count in Counter(node.service for node in view.nodes()).items():
            counts[service] = max(counts[service], count)
    return [Observation(count, {"service": service}) for service, count in counts.items()]


meter.create_observable_gauge(
    "qosmesh.discovery.nodes",
    callbacks=[_observe_nodes],
    unit="{node}",
    description="Live nodes in this instance's view, by service",
)
