"""The console's messaging summary (`/console/api/messaging`) against a real instance: per
consumer, the counts `/metrics` shows for the same instruments."""

from __future__ import annotations

import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.console.conftest import ADMIN_TOKEN

pytestmark = pytest.mark.slow


def scraped(url: str, name: str, **labels: str) -> float:
    text = httpx.get(url + "/metrics", timeout=5).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def test_the_summary_counts_what_metrics_counts(instances, tmp_path):
    (tmp_path / "flag").write_text("the first one fails")
    service = instances()
    info = httpx.get(service.url + "/console/api/info", timeout=5).json()
    assert info["service"] == "console-test"
    assert info["admin"] is True
    for note in ("a", "b", "c"):
        assert httpx.post(service.url + "/flaky", json={"note": note}).status_code == 202
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    deadline = time.monotonic() + 20
    while httpx.get(service.url + "/admin/dlq", headers=auth).json()["total"] < 3:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    (tmp_path / "flag").unlink()
    assert httpx.post(service.url + "/flaky", json={"note": "d"}).status_code == 202
    subject = "console-test.flaky_job"
    while True:
        summary = httpx.get(service.url + "/console/api/messaging", timeout=5).json()
        (consumer,) = summary["consumers"]
        if consumer["handled"] >= 1 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert consumer["consumer"] == "console-test__flaky_job"
    assert (consumer["subject"], consumer["qos"], consumer["transport"]) == (
        subject,
        1,
        "jetstream",
    )
    assert consumer["handled"] == 1
    assert consumer["dead_letters"] == 3
    assert consumer["redeliveries"] == 3  # each failed one was delivered twice
    assert consumer["pending"] == 0
    ack = scraped(
        service.url,
        "messaging_client_consumed_messages_total",
        messaging_destination_name=subject,
        outcome="ack",
    )
    assert consumer["handled"] == ack
    assert summary["qos"]["redeliveries"] == scraped(service.url, "qosmesh_redeliveries_total")
    assert summary["qos"]["qos0_lost"] == 0
