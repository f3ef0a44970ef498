"""The example's singleton job: one instance holds the `order-stats` lease, keeps the order
summary with the lease's fencing token, and says so in its discovery metadata; a write with an
older token is refused by the row itself."""

from __future__ import annotations

import pytest

from app.errors import StaleTokenError
from app.example import stats
from app.instance.services import services_of
from app.testing import eventually


@pytest.fixture
def often(monkeypatch):
    monkeypatch.setattr(stats, "EVERY", 0.2)


async def test_the_holder_keeps_the_summary_with_its_token_and_a_stale_one_is_refused(often, shop):
    for sku in ("a", "b"):
        assert (
            await shop.client.post("/orders", json={"sku": sku, "quantity": 1})
        ).status_code == 202

    async def summarized() -> bool:
        answer = await shop.client.get("/orders/stats")
        return answer.status_code == 200 and bool(answer.json()["confirmed"] == 2)

    await eventually(summarized, timeout=15)
    summary = (await shop.client.get("/orders/stats")).json()
    services = services_of(shop.app)
    lease = services.runtime.leases.lease("order-stats")
    assert summary["computed_by"] == services.discovery.self_info.node_id
    assert summary["token"] <= lease.token  # renewals only raise it

    nodes = (await shop.client.get("/nodes")).json()
    (me,) = [n for n in nodes["nodes"] if n["node_id"] == nodes["self"]]
    assert me["metadata"]["leases"] == "order-stats"

    assert services.database is not None
    async with services.database.transaction() as session:
        with pytest.raises(StaleTokenError):
            await stats.write(session, summary["token"] - 1, "a holder that paused")
    after = (await shop.client.get("/orders/stats")).json()
    assert after["computed_by"] == services.discovery.self_info.node_id
