"""Discovery in process memory, for unit tests: instances sharing one `MemoryRegistry` see
each other as instances sharing one bucket do."""

from __future__ import annotations

from app.discovery.base import LeaveReason
from app.discovery.models import NodeInfo, now
from app.discovery.view import NodeView, ViewSubscription


class MemoryRegistry:
    """The stand-in for the KV bucket: the registered nodes and who watches them."""

    def __init__(self) -> None:
        self._nodes: dict[str, NodeInfo] = {}
        self._watchers: list[NodeView] = []

    def watch(self, view: NodeView) -> None:
        self._watchers.append(view)
        view.replace(self._nodes)

    def unwatch(self, view: NodeView) -> None:
        self._watchers.remove(view)

    def write(self, node: NodeInfo) -> None:
        self._nodes[node.key] = node
        for view in self._watchers:
            view.put(node)

    def delete(self, key: str, reason: LeaveReason = "graceful") -> None:
        """Remove a node; `reason="expired"` is what a crashed node looks like."""
        if self._nodes.pop(key, None) is not None:
            for view in self._watchers:
                view.remove(key, reason)


class MemoryDiscovery:
    """The `Discovery` Protocol over a `MemoryRegistry`; registered by `register()`."""

    def __init__(self, info: NodeInfo, registry: MemoryRegistry | None = None) -> None:
        self._info = info
        self._registry = registry or MemoryRegistry()
        self._view = NodeView()
        self._registered = False
        self._registry.watch(self._view)

    @property
    def self_info(self) -> NodeInfo:
        return self._info

    def nodes(self, service: str | None = None) -> list[NodeInfo]:
        return self._view.nodes(service)

    def get(self, node_id: str) -> NodeInfo | None:
        return self._view.get(node_id)

    def subscribe(self) -> ViewSubscription:
        return self._view.subscribe()

    async def readiness(self) -> dict[str, str]:
        return {"discovery": "ok" if self._registered else "not_registered"}

    async def register(self) -> None:
        self._info = self._info.model_copy(update={"last_seen": now()})
        self._registry.write(self._info)
        self._registered = True

    async def heartbeat(self) -> None:
        if self._registered:
            await self.register()

    async def set_metadata(self, metadata: dict[str, str]) -> None:
        self._info = self._info.model_copy(update={"metadata": dict(metadata)})
        if self._registered:
            await self.register()

    async def deregister(self) -> None:
        if self._registered:
            self._registered = False
            self._registry.delete(self._info.key)

    async def close(self) -> None:
        await self.deregister()
        self._registry.unwatch(self._view)
        self._view.close()
