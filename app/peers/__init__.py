"""Peer calls by service name: `http://<service>/path` goes to a live instance of that service,
chosen from the discovery view, with failover when a retry cannot do harm."""

from app.errors import NoInstanceError
from app.peers.balancing import Balancer, PreferLocal, RandomChoice, RoundRobin
from app.peers.client import PeerClient
from app.peers.transport import NODE_EXTENSION, CallBudget, DiscoveryTransport

__all__ = [
    "NODE_EXTENSION",
    "Balancer",
    "CallBudget",
    "DiscoveryTransport",
    "NoInstanceError",
    "PeerClient",
    "PreferLocal",
    "RandomChoice",
    "RoundRobin",
]
