"""The leases bucket deleted while the example runs (an operator's mistake, a cluster restored
from scratch): the instance makes it again and goes on keeping the order summary, with a fencing
token larger than any written before, so the row still refuses the old holder's writes."""

from __future__ import annotations

from typing import Any

import pytest

from app.example import stats
from app.instance.services import services_of
from app.testing import eventually

pytestmark = pytest.mark.slow  # long: run in CI, left out of a generated project's quick run


@pytest.fixture
def often(monkeypatch):
    monkeypatch.setattr(stats, "EVERY", 0.2)


async def _summary(shop) -> dict[str, Any] | None:
    answer = await shop.client.get("/orders/stats")
    return answer.json() if answer.status_code == 200 else None


async def test_the_summary_goes_on_with_a_larger_token_after_the_bucket_is_made_again(often, shop):
    assert (await shop.client.post("/orders", json={"sku": "a", "quantity": 1})).status_code == 202
    services = services_of(shop.app)
    bucket = f"{services.settings.service_name.replace('-', '_')}_leases"

    async def written() -> bool:
        summary = await _summary(shop)
        return summary is not None and summary["confirmed"] == 1

    await eventually(written, timeout=15)
    tokens: list[int] = []
    for _ in range(3):  # a few renewals' worth of summaries before the bucket goes
        before = await _summary(shop)
        assert before is not None
        tokens.append(before["token"])
        await eventually(lambda at=before["computed_at"]: _newer(shop, at), timeout=10)

    await shop.js.delete_key_value(bucket)

    async def written_again() -> bool:
        summary = await _summary(shop)
        return summary is not None and summary["token"] > max(tokens)

    await eventually(written_again, timeout=30)
    after = await _summary(shop)
    assert after is not None
    assert after["computed_by"] == services.discovery.self_info.node_id
    assert (await shop.js.key_value(bucket)) is not None  # the instance made it again
    # and it keeps being written, token never going back
    await eventually(lambda: _newer(shop, after["computed_at"]), timeout=10)
    latest = await _summary(shop)
    assert latest is not None
    assert latest["token"] >= after["token"]
    assert (await shop.client.get("/readyz")).status_code == 200


async def _newer(shop, than: str) -> bool:
    summary = await _summary(shop)
    return summary is not None and summary["computed_at"] > than
