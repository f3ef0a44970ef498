"""How a peer call picks among the live instances of a service: round robin, random, or this
instance first."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from typing import Literal, Protocol

from app.discovery.models import NodeInfo

BalancingName = Literal["round_robin", "random", "prefer_local"]


class Balancer(Protocol):
    """Orders candidate instances for one call: the first is tried first, the rest are where
    failover goes, in that order. Never adds a node that is not among `nodes`."""

    def order(self, service: str, nodes: Sequence[NodeInfo]) -> list[NodeInfo]: ...


class RoundRobin:
    """Each call of a service starts one instance further along its instances, by node id."""

    def __init__(self) -> None:
        self._next: defaultdict[str, int] = defaultdict(int)

    def order(self, service: str, nodes: Sequence[NodeInfo]) -> list[NodeInfo]:
        ordered = sorted(nodes, key=lambda node: node.node_id)
        if not ordered:
            return []
        start = self._next[service] % len(ordered)
        self._next[service] = start + 1
        return ordered[start:] + ordered[:start]


class RandomChoice:
    """A uniformly random instance first, the others in random order behind it."""

    def __init__(self, seed: int | None = None) -> None:
        # Spreading load, not secrets: a seedable PRNG is what tests and callers want here.
        self._random = random.Random(seed)  # noqa: S311

    def order(self, service: str, nodes: Sequence[NodeInfo]) -> list[NodeInfo]:
        return self._random.sample(list(nodes), k=len(nodes))


class PreferLocal:
    """This instance first when it serves the service (no network hop), then round robin."""

    def __init__(self, local_node_id: str) -> None:
        self._local = local_node_id
        self._others = RoundRobin()

    def order(self, service: str, nodes: Sequence[NodeInfo]) -> list[NodeInfo]:
        local = [node for node in nodes if node.node_id == self._local]
        others = [node for node in nodes if node.node_id != self._local]
        return local + self._others.order(service, others)


def balancer_named(name: BalancingName, local_node_id: str) -> Balancer:
    if name == "round_robin":
        return RoundRobin()
    if name == "random":
        return RandomChoice()
    return PreferLocal(local_node_id)
