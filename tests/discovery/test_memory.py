"""The in-memory implementation and the view rules both implementations share."""

from __future__ import annotations

from datetime import timedelta

import pytest

from app.discovery import Discovery, MemoryDiscovery, MemoryRegistry, NodeInfo
from app.discovery.models import BadNodeValue, decode_node, new_node_id, now


def node_info(service: str = "orders") -> NodeInfo:
    started = now()
    return NodeInfo(
        node_id=new_node_id(),
        service=service,
        version="1.0",
        address="http://10.0.0.5:8000",
        started_at=started,
        last_seen=started,
    )


async def collect(discovery: MemoryDiscovery, count: int) -> list[tuple[str, str, str | None]]:
    seen: list[tuple[str, str, str | None]] = []
    async for event in discovery.subscribe():
        seen.append((event.kind, event.node.node_id, event.reason))
        if len(seen) == count:
            break
    return seen


async def test_peers_in_one_registry_see_joins_updates_and_leaves():
    registry = MemoryRegistry()
    a = MemoryDiscovery(node_info(), registry)
    b = MemoryDiscovery(node_info("billing"), registry)
    as_protocol: Discovery = a
    assert as_protocol.self_info == a.self_info
    await a.register()
    subscription = a.subscribe()
    await b.register()
    await b.heartbeat()
    await b.set_metadata({"draining": "true"})
    await b.deregister()
    subscription.close()

    events = [(e.kind, e.node.node_id, e.reason) async for e in subscription]
    b_id = b.self_info.node_id
    assert events == [
        ("joined", a.self_info.node_id, None),
        ("joined", b_id, None),
        ("updated", b_id, None),
        ("left", b_id, "graceful"),
    ]
    assert await b.readiness() == {"discovery": "not_registered"}
    assert await a.readiness() == {"discovery": "ok"}


async def test_an_expired_node_leaves_with_reason_expired():
    registry = MemoryRegistry()
    a = MemoryDiscovery(node_info(), registry)
    b = MemoryDiscovery(node_info(), registry)
    await a.register()
    await b.register()
    registry.delete(b.self_info.key, reason="expired")
    assert [n.node_id for n in a.nodes()] == [a.self_info.node_id]
    assert await collect(a, 1) == [("joined", a.self_info.node_id, None)]


def test_node_info_json_is_the_documented_shape():
    info = node_info()
    raw = info.model_dump(mode="json", by_alias=True)
    assert set(raw) == {
        "node_id",
        "service",
        "version",
        "address",
        "started_at",
        "last_seen",
        "metadata",
        "schema",
    }
    assert raw["schema"] == 1
    assert raw["started_at"].endswith("Z")
    assert decode_node(info.key, info.to_json()) == info


def test_only_last_seen_changing_is_not_a_change():
    info = node_info()
    later = info.model_copy(update={"last_seen": info.last_seen + timedelta(seconds=2)})
    assert info.same_apart_from_last_seen(later)
    assert not info.same_apart_from_last_seen(later.model_copy(update={"version": "2"}))


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (b"{oops", "not JSON"),
        (b"[1]", "not a JSON object"),
        (b'{"schema": 2}', "unknown schema version 2"),
        (b'{"schema": 1, "node_id": "x"}', "invalid NodeInfo"),
    ],
)
def test_unreadable_values_are_rejected_with_a_reason(value, why):
    with pytest.raises(BadNodeValue, match=why):
        decode_node("orders.x", value)


def test_node_ids_are_single_key_tokens():
    ids = {new_node_id() for _ in range(100)}
    assert len(ids) == 100
    assert all("." not in node_id and node_id for node_id in ids)
