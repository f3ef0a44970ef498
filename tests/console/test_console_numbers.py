"""The console's numbers against real instances in headless Chromium: heartbeat ages from real
heartbeats, the service's view added up from three instances (a shared backlog once), and the
charts drawing the series the instances measured."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium.webdriver.common.by import By

from tests.console.test_browser import click, console_errors, node_id, requests_elsewhere, until

pytestmark = pytest.mark.slow

CONSUMER = "console-test__flaky_job"
TTL = 6.0


def heartbeat_ages(browser) -> dict[str, float]:
    script = (
        "return Object.fromEntries([...document.querySelectorAll('#nodes-table tbody tr')]"
        ".map(r => [r.dataset.node, Number(r.querySelector('.heartbeat').dataset.age)]))"
    )
    return dict(browser.execute_script(script))


def test_heartbeat_ages_of_live_nodes_stay_under_the_ttl(browser, instances, shots):
    first = instances(APP_NODE_TTL=str(TTL))
    second = instances(APP_NODE_TTL=str(TTL))
    ids = {node_id(first), node_id(second)}
    browser.get(first.url + "/console")
    until(browser, lambda: ids <= set(heartbeat_ages(browser)))
    oldest = 0.0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ages = heartbeat_ages(browser)
        assert ids <= set(ages)
        oldest = max(oldest, *(ages[i] for i in ids))
        assert oldest < TTL, f"a live node's heartbeat shown {oldest:.1f}s old (TTL {TTL}s)"
        shown = browser.execute_script(
            f"return document.querySelector(\"tr[data-node='{node_id(second)}'] .heartbeat\")"
            ".textContent"
        )
        assert shown.endswith(" s")
        time.sleep(1)
    print(f"oldest heartbeat shown in 30 s: {oldest:.2f}s (TTL {TTL}s)")
    assert oldest > 0  # ages are counted, not stuck at zero
    browser.save_screenshot(str(shots / "console-nodes-heartbeats-1280.png"))
    assert console_errors(browser) == []


def consumer_row(browser) -> dict[str, str]:
    script = (
        f"const r = document.querySelector(\"#consumers-table tr[data-consumer='{CONSUMER}']\");"
        "return r ? {pending: r.dataset.pending, handled: r.dataset.handled,"
        " scope: document.getElementById('messaging').dataset.scope} : null"
    )
    return browser.execute_script(script) or {}


def chart(browser, name: str) -> dict[str, Any]:
    """What one chart draws, read back from uPlot: its series' labels and its data."""
    script = (
        f"const c = window.qosmeshCharts['{name}'];"
        "return c ? {labels: c.series.slice(1).map(s => s.label), data: c.data} : null"
    )
    return browser.execute_script(script) or {}


def test_the_service_view_adds_three_instances_up_and_the_charts_draw_it(
    browser, instances, tmp_path: Path, shots
):
    hold = tmp_path / "hold"
    services = [instances(FLAKY_HOLD=str(hold)) for _ in range(3)]
    first = services[0]
    for n in range(30):  # spread over the three instances' HTTP APIs; any of them handles it
        service = services[n % 3]
        assert httpx.post(service.url + "/flaky", json={"note": f"n{n}"}).status_code == 202
    effects = tmp_path / "effects"
    until(browser, lambda: effects.exists() and len(effects.read_text().splitlines()) == 30, 30)

    def handled_by(service) -> float:
        summary = httpx.get(service.url + "/console/api/messaging", timeout=5).json()
        return float(sum(c["handled"] for c in summary["consumers"] if c["consumer"] == CONSUMER))

    until(browser, lambda: sum(handled_by(s) for s in services) == 30, 10)
    shares = [handled_by(s) for s in services]
    print(f"handled per instance: {shares}")
    assert sum(1 for share in shares if share) >= 2  # the work was shared out

    browser.get(first.url + "/console#messaging")
    until(browser, lambda: consumer_row(browser).get("scope") == "instance")
    until(browser, lambda: float(consumer_row(browser)["handled"]) == shares[0])
    browser.save_screenshot(str(shots / "console-messaging-instance-1280.png"))
    click(browser, "#scope-service")
    until(browser, lambda: consumer_row(browser).get("scope") == "service")
    until(browser, lambda: float(consumer_row(browser)["handled"]) == 30)
    scope_line = browser.find_element(By.ID, "messaging-scope").text
    assert "3 instances" in scope_line
    assert "service" in browser.find_element(By.ID, "charts-title").text

    # Handled per second, integrated over the minutes drawn: every job, once.
    def handled_drawn() -> float:
        drawn = chart(browser, "handled_per_second")
        if CONSUMER not in drawn.get("labels", []):
            return -1
        column = drawn["data"][1 + drawn["labels"].index(CONSUMER)]
        return sum(rate or 0 for rate in column) * 2.0  # one slot per two seconds

    until(browser, lambda: abs(handled_drawn() - 30) <= 3, 15)
    publish = chart(browser, "publish_p99")
    assert any(value is not None and value > 0 for value in publish["data"][1])

    # A backlog of the shared consumer, held by the three: shown once, not three times.
    hold.write_text("hold every job")
    for n in range(12):
        assert httpx.post(first.url + "/flaky", json={"note": f"held{n}"}).status_code == 202

    def pending_of(service) -> Any:
        numbers = httpx.get(service.url + "/console/api/numbers", timeout=5).json()
        return next(c["pending"] for c in numbers["consumers"] if c["consumer"] == CONSUMER)

    until(browser, lambda: all(pending_of(s) == 12 for s in services), 20)
    until(browser, lambda: consumer_row(browser).get("pending") == "12", 10)

    def pending_drawn() -> float | None:
        drawn = chart(browser, "pending")
        if CONSUMER not in drawn.get("labels", []):
            return None
        column = drawn["data"][1 + drawn["labels"].index(CONSUMER)]
        return next((v for v in reversed(column) if v is not None), None)

    until(browser, lambda: pending_drawn() == 12, 10)
    oldest = chart(browser, "oldest_unacked")
    assert CONSUMER in oldest["labels"]
    browser.save_screenshot(str(shots / "console-messaging-service-1280.png"))
    hold.unlink()
    until(browser, lambda: len(effects.read_text().splitlines()) == 42, 30)
    assert console_errors(browser) == []
    assert requests_elsewhere(browser, first.url) == []
