"""The console and the API docs in a real headless Chromium, against real instances on a real
nats-server: rows come and go live, dead letters are grouped, shown as text and replayed, and
nothing is fetched from another origin."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from app.testing import ServiceProcess
from tests.console.conftest import ADMIN_TOKEN, NODE_TTL

pytestmark = pytest.mark.slow

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"
"""ReDoc's footer logo: the page's policy refuses it, so it never leaves the host."""


def node_id(service: ServiceProcess) -> str:
    return str(httpx.get(service.url + "/nodes", timeout=5).json()["self"])


def until(browser: WebDriver, check: Callable[[], Any], timeout: float = 10.0) -> Any:
    return WebDriverWait(browser, timeout, poll_frequency=0.05).until(lambda _: check())


def click(browser: WebDriver, selector: str) -> None:
    """Click the element `selector` names, again if the page re-rendered it meanwhile."""

    def clicked() -> bool:
        try:
            browser.find_element(By.CSS_SELECTOR, selector).click()
        except StaleElementReferenceException:
            return False
        return True

    until(browser, clicked)


def rows(browser: WebDriver, table: str, key: str) -> list[str]:
    script = f"return [...document.querySelectorAll('#{table} tbody tr')].map(r => r.dataset.{key})"
    return list(browser.execute_script(script))


def log_of(browser: WebDriver, kind: str) -> list[dict[str, Any]]:
    """Chromium's `browser` (console) or `performance` (network) log since the last read."""
    return list(browser.get_log(kind))  # type: ignore[no-untyped-call]  # untyped in selenium


def console_errors(browser: WebDriver, allowed: tuple[str, ...] = ()) -> list[str]:
    return [
        entry["message"]
        for entry in log_of(browser, "browser")
        if entry["level"] == "SEVERE" and not any(a in entry["message"] for a in allowed)
    ]


def requests_elsewhere(browser: WebDriver, origin: str) -> list[str]:
    """URLs the page requested from another origin and the browser did not refuse to send."""
    sent: dict[str, str] = {}
    refused: set[str] = set()
    for entry in log_of(browser, "performance"):
        message = json.loads(entry["message"])["message"]
        params = message.get("params", {})
        if message["method"] == "Network.requestWillBeSent":
            sent[params["requestId"]] = params["request"]["url"]
        elif message["method"] == "Network.loadingFailed" and params.get("blockedReason"):
            refused.add(params["requestId"])
    return [
        url
        for request, url in sent.items()
        if request not in refused
        and url.startswith(("http:", "https:", "ws:", "wss:"))
        and not url.startswith(origin)
    ]


def fits(browser: WebDriver) -> bool:
    """No horizontal scroll on the page itself (wide tables scroll inside their box)."""
    return bool(
        browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
    )


def test_instances_appear_live_and_a_killed_one_leaves_without_a_reload(browser, instances, shots):
    first, second = instances(), instances()
    ids = {node_id(first), node_id(second)}
    browser.get(first.url + "/console")
    until(browser, lambda: ids <= set(rows(browser, "nodes-table", "node")))
    marked = browser.find_element(By.CSS_SELECTOR, "#nodes-table tr.self").get_attribute(
        "data-node"
    )
    assert marked == node_id(first)

    third = instances()
    doomed = node_id(third)
    joined = time.monotonic()
    until(browser, lambda: doomed in rows(browser, "nodes-table", "node"))
    assert time.monotonic() - joined < 1.0
    browser.save_screenshot(str(shots / "console-nodes-1280.png"))
    third.kill()
    killed = time.monotonic()
    until(browser, lambda: doomed not in rows(browser, "nodes-table", "node"), NODE_TTL + 5)
    gone_after = time.monotonic() - killed
    print(f"row gone {gone_after:.2f}s after SIGKILL (TTL {NODE_TTL}s)")
    assert gone_after <= NODE_TTL + 1.0
    assert set(rows(browser, "nodes-table", "node")) >= ids
    assert console_errors(browser) == []
    assert requests_elsewhere(browser, first.url) == []


def test_a_dead_letter_is_grouped_shown_as_text_and_replayed_from_the_console(
    browser, instances, tmp_path: Path, shots
):
    flag, effects = tmp_path / "flag", tmp_path / "effects"
    flag.write_text("fail while this is here")
    service = instances()
    note = "<script>window.pwned = 1</script><img src=x onerror=window.pwned=2>"
    assert httpx.post(service.url + "/flaky", json={"note": note}, timeout=5).status_code == 202
    deadline = time.monotonic() + 20
    while httpx.get(service.url + "/admin/dlq", headers=AUTH).json()["total"] < 1:
        assert time.monotonic() < deadline, "the failing handler's message was not dead-lettered"
        time.sleep(0.1)

    browser.get(service.url + "/console#dlq")
    token = until(browser, lambda: browser.find_element(By.ID, "dlq-token"))
    token.send_keys(ADMIN_TOKEN)
    browser.find_element(By.CSS_SELECTOR, "#dlq-login button[type=submit]").click()
    until(browser, lambda: rows(browser, "groups-table", "fingerprint"))
    group = browser.find_element(By.CSS_SELECTOR, "#groups-table tbody tr").text
    assert "FlakyJob" in group
    assert "RuntimeError" in group
    click(browser, "#groups-table button.open")
    until(browser, lambda: rows(browser, "letters-table", "dlq"))
    click(browser, "#letters-table button.show")
    body = until(browser, lambda: browser.find_element(By.ID, "letter-body").text)
    assert note in body  # the markup as text
    assert browser.execute_script("return document.querySelectorAll('#letter-body *').length") == 0
    assert browser.execute_script("return window.pwned") is None
    browser.save_screenshot(str(shots / "console-dead-letters-1280.png"))

    browser.set_window_size(390, 844)
    for tab in ("nodes", "messaging", "health", "dlq"):
        browser.find_element(By.ID, f"tab-{tab}").click()
        time.sleep(0.3)
        assert fits(browser), f"{tab}: the page scrolls sideways at 390 px"
        browser.save_screenshot(str(shots / f"console-{tab}-390.png"))
    browser.set_window_size(1280, 900)
    for tab in ("messaging", "health"):
        browser.find_element(By.ID, f"tab-{tab}").click()
        time.sleep(0.3)
        browser.save_screenshot(str(shots / f"console-{tab}-1280.png"))
    browser.find_element(By.ID, "tab-dlq").click()

    flag.unlink()
    until(browser, lambda: rows(browser, "letters-table", "dlq"))
    click(browser, "#letters-table button.replay")
    alert = until(browser, lambda: browser.switch_to.alert)
    assert "Replay dead letter" in alert.text
    alert.accept()
    until(browser, lambda: effects.exists() and effects.read_text() == note + "\n", 20)
    until(browser, lambda: rows(browser, "groups-table", "fingerprint") == [])
    assert console_errors(browser) == []
    assert requests_elsewhere(browser, service.url) == []


def test_the_api_docs_render_their_operations_offline(browser, instances, shots):
    """On an instance without APP_ADMIN_TOKEN, whose dead-letter tab says how to enable it."""
    service = instances(APP_ADMIN_TOKEN="")
    browser.get(service.url + "/console#dlq")
    until(browser, lambda: browser.find_element(By.ID, "dlq-off").is_displayed())
    assert "APP_ADMIN_TOKEN" in browser.find_element(By.ID, "dlq-off").text
    assert not browser.find_element(By.ID, "dlq-login").is_displayed()
    assert not browser.find_element(By.ID, "dlq-view").is_displayed()
    browser.get(service.url + "/console#catalogue")
    until(browser, lambda: browser.find_elements(By.CSS_SELECTOR, "article.channel"))
    channel = browser.find_element(By.CSS_SELECTOR, "article.channel")
    assert channel.get_attribute("data-channel") == "console-test.flaky_job"
    assert "QoS 1 on jetstream" in channel.text
    assert "sends and receives" in channel.text
    browser.save_screenshot(str(shots / "console-catalogue-1280.png"))
    assert console_errors(browser) == []

    browser.get(service.url + "/docs")
    until(browser, lambda: browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path"), 20)
    paths = {
        e.text.replace("\u200b", "")
        for e in browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")
    }
    assert {"/nodes", "/cluster/health", "/flaky"} <= paths
    browser.save_screenshot(str(shots / "docs-1280.png"))
    assert console_errors(browser) == []
    assert requests_elsewhere(browser, service.url) == []

    browser.get(service.url + "/redoc")
    until(
        browser,
        lambda: browser.find_elements(By.CSS_SELECTOR, "[data-section-id^='operation/']"),
        20,
    )
    assert console_errors(browser, allowed=(REDOC_LOGO,)) == []
    assert requests_elsewhere(browser, service.url) == []
