"""The console's dead-letters view lists the outbox rows refused for good, in headless Chromium:
shown with their reason, and handed back to the relay from the page."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import httpx

from app.database.connection import open_database
from tests.console.conftest import ADMIN_TOKEN
from tests.console.test_browser import click, console_errors, rows, until
from tests.database.conftest import bus_with_database
from tests.transports.conftest import Ping

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def write_poison(settings, message: Ping) -> None:
    """An outbox row delayed 8 days, written under the fallback scheduler (which keeps it)."""

    async def write() -> None:
        async with (
            open_database(settings, migrate=True) as database,
            bus_with_database(settings, database) as writer,
            database.transaction() as session,
        ):
            await writer.bus.publish(message, session=session, delay=timedelta(days=8))

    asyncio.run(write())


def test_an_outbox_row_refused_for_good_is_listed_and_retried_from_the_console(
    browser, instances, settings_for, nats_server, postgres_server, shots, tmp_path: Path
):
    message = Ping(n=7)
    write_poison(
        settings_for(
            nats_url=nats_server.url,
            database_url=postgres_server.url,
            scheduler="fallback",
            service_name="console-test",
        ),
        message,
    )
    service = instances(APP_DATABASE_URL=postgres_server.url, APP_SCHEDULER="native")
    until(
        browser,
        lambda: httpx.get(service.url + "/admin/outbox/dead", headers=AUTH).json()["total"] == 1,
        20,
    )

    browser.get(service.url + "/console#dlq")
    token = until(browser, lambda: browser.find_element("id", "dlq-token"))
    token.send_keys(ADMIN_TOKEN)
    browser.find_element("css selector", "#dlq-login button[type=submit]").click()
    until(browser, lambda: rows(browser, "outbox-table", "row"))
    row = browser.find_element("css selector", "#outbox-table tbody tr").text
    assert "Ping" in row
    assert message.message_id in row
    assert "a delay beyond" in row
    browser.save_screenshot(str(shots / "console-outbox-dead-1280.png"))

    click(browser, "#outbox-table button.retry-row")
    alert = until(browser, lambda: browser.switch_to.alert)
    assert "Retry outbox row" in alert.text
    alert.accept()
    status = until(browser, lambda: browser.find_element("id", "dlq-result").text or None)
    assert "handed back to the relay" in status

    def dead_again() -> bool:
        listed = httpx.get(service.url + "/admin/outbox/dead", headers=AUTH).json()["items"]
        return [item["attempts"] for item in listed] == [2]

    # The cause stands (the server's schedules still refuse the delay): dead again, tried twice.
    until(browser, dead_again, 20)
    assert console_errors(browser) == []
