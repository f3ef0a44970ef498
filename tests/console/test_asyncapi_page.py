"""`GET /asyncapi`: the AsyncAPI document as a page. Over HTTP it is sent with the console's
policy, names every channel and escapes what the document says; in a real headless Chromium
every channel shows its QoS, transport and example, the schemas stay folded until opened, and
nothing is fetched from another origin or refused by the policy."""

from __future__ import annotations

import copy
import json
import re

import httpx
import pytest
from selenium.webdriver.common.by import By

from app.api.asyncapi_page import page
from app.api.console import CSP
from app.testing import running_app
from tests.console.test_browser import click, console_errors, fits, requests_elsewhere, until

HOSTILE = "<script>window.pwned = 1</script><img src=x onerror=window.pwned=2>"


@pytest.fixture
async def served(settings_for, nats_server, tmp_path, monkeypatch):
    """The page and the document of an instance of the test domain."""
    monkeypatch.setenv("FLAKY_FLAG", str(tmp_path / "flag"))
    monkeypatch.setenv("FLAKY_EFFECTS", str(tmp_path / "effects"))
    settings = settings_for(nats_url=nats_server.url, domain="tests.console.flaky_domain")
    async with running_app(settings) as (_, url), httpx.AsyncClient(base_url=url) as client:
        response = await client.get("/asyncapi")
        document = (await client.get("/asyncapi.json")).json()
        assets = [
            (await client.get(link)).status_code
            for link in re.findall(r'(?:src|href)="(/console/static/[^"]+)"', response.text)
        ]
    return response, document, assets


async def test_the_page_is_sent_with_the_console_policy_and_names_every_channel(served):
    response, document, assets = served
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["content-security-policy"] == CSP
    assert response.headers["x-content-type-options"] == "nosniff"
    html = response.text
    assert "<script" not in html
    assert "style=" not in html
    assert all(url.startswith(("/", "#")) for url in re.findall(r'(?:src|href)="([^"]+)"', html))
    assert assets == [200, 200, 200]  # console.css, asyncapi.css, the icon
    assert document["channels"]
    for channel in document["channels"].values():
        assert f'data-channel="{channel["address"]}"' in html
    assert html.count('<details class="schema">') == len(document["channels"])
    assert "<details open" not in html


async def test_what_the_document_says_is_shown_as_text(served):
    """Titles, descriptions, addresses and consumers are the service's to choose: escaped."""
    _, document, _ = served
    hostile = copy.deepcopy(document)
    hostile["info"]["title"] = hostile["info"]["description"] = HOSTILE
    channel = hostile["channels"]["FlakyJob"]
    channel["address"] = f'"><b>{HOSTILE}'
    hostile["operations"]["receiveFlakyJob"]["x-consumer"] = HOSTILE
    hostile["components"]["messages"]["FlakyJob"]["summary"] = HOSTILE
    hostile["components"]["messages"]["FlakyJob"]["examples"][0]["payload"]["note"] = HOSTILE
    html = page(hostile)
    assert "<script>" not in html
    assert "<img" not in html
    assert "<b>" not in html
    assert 'data-channel="&quot;&gt;&lt;b&gt;&lt;script&gt;' in html
    assert html.count("&lt;script&gt;window.pwned = 1&lt;/script&gt;") >= 6


def test_a_document_without_channels_says_so():
    empty = {
        "asyncapi": "3.0.0",
        "info": {"title": "quiet", "version": "1"},
        "channels": {},
        "operations": {},
        "components": {"schemas": {}, "messages": {}},
    }
    assert "This service declares no messages." in page(empty)


@pytest.mark.slow
def test_every_channel_shows_its_qos_transport_and_example_with_its_schema_folded(
    browser, instances, shots
):
    service = instances()
    document = httpx.get(service.url + "/asyncapi.json", timeout=5).json()
    browser.get(service.url + "/asyncapi")
    until(browser, lambda: browser.find_elements(By.CSS_SELECTOR, "article.channel"))
    assert browser.find_element(By.TAG_NAME, "h1").text.startswith("console-test")
    for key, channel in document["channels"].items():
        article = browser.find_element(By.ID, f"channel-{key}")
        assert article.get_attribute("data-channel") == channel["address"]
        text = article.text
        assert f"{channel['x-qos']} · " in text
        assert channel["x-transport"] in text
        assert "qm-id: " in text
        (example,) = document["components"]["messages"][key]["examples"]
        shown = article.find_element(By.CSS_SELECTOR, "pre.example").text
        assert json.loads(shown) == example["payload"]
        schema = article.find_element(By.CSS_SELECTOR, "details.schema")
        assert schema.get_attribute("open") is None
        assert not schema.find_element(By.TAG_NAME, "pre").is_displayed()
    flaky = browser.find_element(By.ID, "channel-FlakyJob").text
    assert "sends" in flaky
    assert "receives through consumer console-test__flaky_job" in flaky
    height = browser.execute_script("return document.documentElement.scrollHeight")
    assert height < 2000, f"{height} px tall at 1280 px wide"
    browser.save_screenshot(str(shots / "asyncapi-1280.png"))

    click(browser, "#channel-FlakyJob details.schema summary")
    schema = browser.find_element(By.CSS_SELECTOR, "#channel-FlakyJob details.schema")
    until(browser, lambda: schema.get_attribute("open") is not None)
    shown = json.loads(schema.find_element(By.TAG_NAME, "pre").text)
    assert shown["FlakyJob"]["properties"]["note"] == {"title": "Note", "type": "string"}
    browser.save_screenshot(str(shots / "asyncapi-schema-1280.png"))

    browser.set_window_size(390, 844)
    until(browser, lambda: fits(browser))
    browser.save_screenshot(str(shots / "asyncapi-390.png"))
    browser.set_window_size(1280, 900)
    assert console_errors(browser) == []
    assert requests_elsewhere(browser, service.url) == []
