"""The membership contract: the `Discovery` Protocol and the events it delivers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal, Protocol

from app.discovery.models import NodeInfo

LeaveReason = Literal["graceful", "expired"]


@dataclass(frozen=True, slots=True)
class NodeJoined:
    node: NodeInfo
    kind: Literal["joined"] = "joined"
    reason: None = None


@dataclass(frozen=True, slots=True)
class NodeUpdated:
    """Something other than `last_seen` changed (heartbeats alone are not updates)."""

    node: NodeInfo
    kind: Literal["updated"] = "updated"
    reason: None = None


@dataclass(frozen=True, slots=True)
class NodeLeft:
    """`graceful`: the node deleted its key; `expired`: its heartbeats stopped for a TTL."""

    node: NodeInfo
    reason: LeaveReason
    kind: Literal["left"] = "left"


NodeEvent = NodeJoined | NodeUpdated | NodeLeft


class NodeEvents(Protocol):
    """Events in the order they happened; ends when the subscriber falls too far behind or
    discovery closes. Close it when done."""

    def __aiter__(self) -> AsyncIterator[NodeEvent]: ...

    def close(self) -> None: ...


class Discovery(Protocol):
    """Membership of every instance of every service in one environment.

    The view is local and never blocks on the broker: `nodes()` answers from memory. Writes
    (`set_metadata`, `deregister`) raise `DiscoveryError` when the broker does not confirm them.
    """

    @property
    def self_info(self) -> NodeInfo:
        """This instance as it last registered."""
        ...

    def nodes(self, service: str | None = None) -> list[NodeInfo]:
        """Every live node (this one included), optionally of one service, by key."""
        ...

    def get(self, node_id: str) -> NodeInfo | None: ...

    def subscribe(self) -> NodeEvents:
        """A stream that starts with a `NodeJoined` for every current node, then follows."""
        ...

    async def readiness(self) -> dict[str, str]:
        """`{"discovery": "ok"}` while registered, else `"not_registered"`."""
        ...

    async def set_metadata(self, metadata: dict[str, str]) -> None:
        """Replace this node's metadata and publish it at once (peers see `updated`)."""
        ...

    async def deregister(self) -> None:
        """Leave now: peers see a graceful leave; heartbeats stop. Idempotent."""
        ...
