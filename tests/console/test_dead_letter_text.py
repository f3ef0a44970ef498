"""Dead letters in headless Chromium say what they are: one that is not a qosmesh message shows
its subject and a plain reason, and a replay that fails again says so."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
from selenium.webdriver.common.by import By

from tests.console.conftest import ADMIN_TOKEN
from tests.console.test_browser import AUTH, click, console_errors, rows, until

pytestmark = pytest.mark.slow

SUBJECT = "console-test.flaky_job"


async def publish_raw(url: str, subject: str, body: bytes) -> None:
    """What a client that knows nothing of qosmesh sends: no envelope headers."""
    client = await nats.connect(url)
    try:
        await client.publish(subject, body)
        await client.flush()
    finally:
        await client.close()


def group_rows(browser) -> list[str]:
    script = "return [...document.querySelectorAll('#groups-table tbody tr')].map(r => r.innerText)"
    return list(browser.execute_script(script))


def test_a_foreign_dead_letter_says_what_it_is_and_a_replay_that_fails_again_says_so(
    browser, instances, nats_server, tmp_path: Path, shots
):
    (tmp_path / "flag").write_text("fail while this is here")
    service = instances()
    asyncio.run(publish_raw(nats_server.url, SUBJECT, b"not json"))
    assert httpx.post(service.url + "/flaky", json={"note": "doomed"}).status_code == 202
    deadline = time.monotonic() + 20
    while httpx.get(service.url + "/admin/dlq", headers=AUTH).json()["total"] < 2:
        assert time.monotonic() < deadline, "the two messages were not dead-lettered"
        time.sleep(0.1)

    browser.get(service.url + "/console#dlq")
    until(browser, lambda: browser.find_element(By.ID, "dlq-token")).send_keys(ADMIN_TOKEN)
    browser.find_element(By.CSS_SELECTOR, "#dlq-login button[type=submit]").click()
    until(browser, lambda: len(group_rows(browser)) == 2)
    foreign = next(row for row in group_rows(browser) if "FlakyJob" not in row)
    assert SUBJECT in foreign
    assert "not a qosmesh message" in foreign
    assert "None" not in foreign

    fingerprints = rows(browser, "groups-table", "fingerprint")
    foreign_at = next(i for i, row in enumerate(group_rows(browser)) if "FlakyJob" not in row)
    click(browser, f"#groups-table tr[data-fingerprint='{fingerprints[foreign_at]}'] button.open")
    until(browser, lambda: rows(browser, "letters-table", "dlq"))
    assert SUBJECT in browser.find_element(By.ID, "group-title").text
    click(browser, "#letters-table button.show")
    title = until(browser, lambda: browser.find_element(By.ID, "letter-title").text)
    assert SUBJECT in title
    error = browser.find_element(By.ID, "letter-error").text
    assert error.startswith("not a qosmesh message")
    assert browser.find_element(By.ID, "letter-body").text == "not json"
    browser.save_screenshot(str(shots / "console-dead-letter-foreign-1280.png"))

    # Replayed while its handler still fails: the page says it failed again, and as what.
    mine = next(i for i, row in enumerate(group_rows(browser)) if "FlakyJob" in row)
    click(browser, f"#groups-table tr[data-fingerprint='{fingerprints[mine]}'] button.open")
    until(browser, lambda: "FlakyJob" in browser.find_element(By.ID, "group-title").text)
    replayed = rows(browser, "letters-table", "dlq")[0]
    click(browser, "#letters-table button.replay")
    alert = until(browser, lambda: browser.switch_to.alert)
    assert f"Replay dead letter {replayed} (FlakyJob)?" == alert.text
    alert.accept()
    said = until(
        browser,
        lambda: "failed again" in (t := browser.find_element(By.ID, "dlq-result").text) and t,
        30,
    )
    print(f"the page said: {said}")
    assert said.startswith(f"replayed {replayed}; failed again: {replayed} as ")
    again = said.split(" as ", 1)[1].split(" ", 1)[0]
    assert again != replayed
    assert again in {item["dlq_id"] for item in _dead(service.url)}
    browser.save_screenshot(str(shots / "console-replay-failed-again-1280.png"))
    assert console_errors(browser) == []


def _dead(url: str) -> list[dict[str, Any]]:
    return list(httpx.get(url + "/admin/dlq", headers=AUTH, timeout=5).json()["items"])
