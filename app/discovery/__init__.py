"""Membership: every instance registers in the environment's KV bucket and watches it."""

from app.discovery.base import Discovery, NodeEvent, NodeJoined, NodeLeft, NodeUpdated, Subscription
from app.discovery.kv import KvDiscovery, open_discovery
from app.discovery.memory import MemoryDiscovery, MemoryRegistry
from app.discovery.models import NodeInfo

__all__ = [
    "Discovery",
    "KvDiscovery",
    "MemoryDiscovery",
    "MemoryRegistry",
    "NodeEvent",
    "NodeInfo",
    "NodeJoined",
    "NodeLeft",
    "NodeUpdated",
    "Subscription",
    "open_discovery",
]
