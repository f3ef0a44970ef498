"""The chart's PrometheusRule: every expression parses as PromQL, every rule has its runbook in
docs/operations.md, and every qosmesh metric the rules name is on a real instance's /metrics."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import httpx
import promql_parser
import pytest

from .conftest import NAMESPACE, ci_values, one, render

ROOT = Path(__file__).resolve().parents[2]
OPERATIONS = ROOT / "docs" / "operations.md"
EXTERNAL = {"kube_deployment_spec_replicas"}
"""The one metric the rules read from outside qosmesh (kube-state-metrics)."""


def rules(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    values = {**ci_values("default"), "alerts": {"enabled": True}, **(values or {})}
    rule = one(render(values), "PrometheusRule")
    return [r for group in rule["spec"]["groups"] for r in group["rules"]]


def metric_names(node: Any, found: set[str]) -> set[str]:
    """The metric names an expression's vector selectors name."""
    if type(node).__name__ == "VectorSelector" and node.name:
        found.add(node.name)
    for attribute in ("lhs", "rhs", "expr", "vector_selector", "args", "param"):
        child = getattr(node, attribute, None)
        for item in child if isinstance(child, list) else [child]:
            if item is not None and not isinstance(item, (str, int, float)):
                metric_names(item, found)
    return found


def test_the_alerts_are_off_by_default():
    assert "PrometheusRule" not in [d["kind"] for d in render(ci_values("default"))]


def test_every_rule_parses_as_promql_and_has_a_runbook():
    sections = {
        re.sub(r"[^a-z0-9 -]", "", heading.lower()).replace(" ", "-")
        for heading in re.findall(r"^## (.+)$", OPERATIONS.read_text(), re.M)
    }
    found = rules()
    assert len(found) >= 5
    for rule in found:
        parsed = promql_parser.parse(rule["expr"])
        print(f"{rule['alert']}: {parsed.prettify()}")
        runbook = rule["annotations"]["runbook_url"]
        assert runbook.partition("#")[2] in sections, rule["alert"]
        assert rule["labels"]["severity"]
        assert f'namespace="{NAMESPACE}"' in rule["expr"]


def test_thresholds_and_durations_come_from_the_values():
    tuned = {
        "alerts": {
            "enabled": True,
            "pendingGrowing": {"for": "30m", "minPending": 5000, "severity": "page"},
            "redeliveries": {"perSecond": 7, "for": "2m", "severity": "ticket"},
        }
    }
    by_name = {rule["alert"]: rule for rule in rules(tuned)}
    growing = by_name["QosMeshConsumerBacklogGrowing"]
    assert growing["for"] == "30m"
    assert "[30m]" in growing["expr"]
    assert growing["expr"].endswith("> 5000")
    assert growing["labels"]["severity"] == "page"
    assert by_name["QosMeshRedeliveriesHigh"]["expr"].endswith("> 7")


def test_the_outbox_rule_can_be_left_out():
    """A service without the outbox turns it off (the scaffold's database=none does)."""

    def alerts(outbox: bool) -> set[str]:
        switch = {"enabled": outbox, "severity": "critical"}
        return {
            rule["alert"] for rule in rules({"alerts": {"enabled": True, "outboxDead": switch}})
        }

    assert alerts(outbox=True) - alerts(outbox=False) == {"QosMeshOutboxRowsDead"}


def test_missing_instances_fire_when_none_is_left_too():
    (rule,) = [r for r in rules() if r["alert"] == "QosMeshInstancesMissing"]
    assert "absent(qosmesh_discovery_nodes{" in rule["expr"]


@pytest.mark.slow
def test_every_metric_the_rules_name_is_on_a_real_scrape(
    request, service_process, nats_server, tmp_path
):
    """An instance with a consumer (the console tests' domain) and a database: its /metrics
    after a message went through."""
    env = {
        "APP_NATS_URL": nats_server.url,
        "APP_DOMAIN": "tests.console.flaky_domain",
        "FLAKY_FLAG": str(tmp_path / "flag"),
        "FLAKY_EFFECTS": str(tmp_path / "effects"),
        "PYTHONPATH": str(ROOT),
    }
    # The outbox's metrics come with a database (the scaffold's database=none drops this).
    env["APP_DATABASE_URL"] = request.getfixturevalue("postgres_server").url
    env["APP_DATABASE_MIGRATE"] = "true"
    service = service_process(env, wait="/readyz")
    assert httpx.post(service.url + "/flaky", json={"note": "x"}).status_code == 202
    wanted: set[str] = set()
    for rule in rules():
        wanted |= metric_names(promql_parser.parse(rule["expr"]), set())
    wanted -= EXTERNAL
    deadline = time.monotonic() + 20  # the outbox's levels are read every 5 s
    while True:
        scraped = set(
            re.findall(r"^([a-z_:]+)[{ ]", httpx.get(service.url + "/metrics").text, re.M)
        )
        if wanted <= scraped or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    print("the rules read:", sorted(wanted))
    assert wanted - scraped == set()
