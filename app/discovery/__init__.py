"""Membership: every instance registers in the environment's KV bucket and watches it."""

from app.discovery.base import Discovery, NodeEvent, NodeEvents, NodeJoined, NodeLeft, NodeUpdated
from app.discovery.kv import KvDiscovery, open_discovery
from app.discovery.memory import MemoryDiscovery, MemoryRegistry
from app.discovery.models import NodeInfo

__all__ = [
    "Discovery",
    "KvDiscovery",
    "MemoryDiscovery",
    "MemoryRegistry",
    "NodeEvent",
    "NodeEvents",
    "NodeInfo",
    "NodeJoined",
    "NodeLeft",
    "NodeUpdated",
    "open_discovery",
]
