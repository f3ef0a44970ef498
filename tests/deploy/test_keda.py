"""The chart's KEDA ScaledObject: off by default, never with the HPA, and its triggers name the
streams and consumers a running instance really creates."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import helm_python
import nats
import pytest

from .conftest import NAMESPACE, RELEASE, ci_values, one, render

ROOT = Path(__file__).resolve().parents[2]


def scaled(values: dict[str, Any]) -> dict[str, Any]:
    return one(render({**ci_values("default"), **values}), "ScaledObject")


def test_keda_is_off_by_default_and_excludes_the_hpa(chart):
    assert "ScaledObject" not in [d["kind"] for d in render(ci_values("default"))]
    keda = {"enabled": True, "messageTypes": ["OrderPlaced"]}
    both = {**ci_values("default"), "keda": keda, "autoscaling": {"enabled": True}}
    with pytest.raises(helm_python.HelmValuesError, match="/autoscaling/enabled"):
        chart.validate_schema(both)
    with pytest.raises(helm_python.HelmValuesError, match="/autoscaling/enabled"):
        render(both)  # the template refuses it too, should the schema be skipped


def test_the_scaled_object_targets_the_deployment_on_the_bundled_cluster():
    types = ["OrderPlaced", "PaymentCaptured"]  # the example's, the values' default
    obj = scaled({"keda": {"enabled": True, "messageTypes": types}})
    print(obj)
    spec = obj["spec"]
    assert spec["scaleTargetRef"]["name"] == f"{RELEASE}-qosmesh"
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (2, 10)
    triggers = [t["metadata"] for t in spec["triggers"]]
    assert [t["type"] for t in spec["triggers"]] == ["nats-jetstream"] * 2
    endpoint = f"{RELEASE}-nats-headless.{NAMESPACE}.svc.cluster.local:8222"
    assert {t["natsServerMonitoringEndpoint"] for t in triggers} == {endpoint}
    service = "qosmesh"  # APP_SERVICE_NAME's default
    assert [(t["stream"], t["consumer"]) for t in triggers] == [
        (f"{service.upper()}_ORDER_PLACED", f"{service}__order_placed"),
        (f"{service.upper()}_PAYMENT_CAPTURED", f"{service}__payment_captured"),
    ]
    assert {t["account"] for t in triggers} == {"$G"}


def test_the_jetstream_scaler_is_refused_when_qos1_is_on_redis():
    values = {**ci_values("external-nats"), "keda": {"enabled": True, "messageTypes": ["X"]}}
    assert values["config"]["APP_QOS1_TRANSPORT"] == "redis"
    with pytest.raises(helm_python.HelmRenderError, match="redis-streams"):
        render(values)


def test_an_external_nats_needs_its_monitoring_endpoint():
    keda = {"enabled": True, "messageTypes": ["OrderPlaced"]}
    external = {**ci_values("external-nats"), "keda": keda}
    external["config"] = {**external["config"], "APP_QOS1_TRANSPORT": "jetstream"}
    with pytest.raises(helm_python.HelmRenderError, match="natsMonitoringEndpoint"):
        render(external)
    external["keda"] = {**keda, "natsMonitoringEndpoint": "nats-mon.infra:8222"}
    obj = one(render(external), "ScaledObject")
    assert obj["spec"]["triggers"][0]["metadata"]["natsServerMonitoringEndpoint"] == (
        "nats-mon.infra:8222"
    )


@pytest.mark.slow
def test_the_triggers_name_streams_and_consumers_a_running_instance_creates(
    service_process, nats_server, tmp_path
):
    """The console tests' domain (service console-test, message type FlakyJob) running: each
    trigger's stream holds the service's subject and has the trigger's durable consumer."""
    values = {
        "config": {"APP_SERVICE_NAME": "console-test"},
        "keda": {"enabled": True, "messageTypes": ["FlakyJob"]},
    }
    triggers = [t["metadata"] for t in scaled(values)["spec"]["triggers"]]
    service_process(
        {
            "APP_NATS_URL": nats_server.url,
            "APP_DOMAIN": "tests.console.flaky_domain",
            "APP_SERVICE_NAME": "console-test",
            "FLAKY_FLAG": str(tmp_path / "flag"),
            "FLAKY_EFFECTS": str(tmp_path / "effects"),
            "PYTHONPATH": str(ROOT),
        },
        wait="/readyz",
    )

    async def check() -> None:
        nc = await nats.connect(nats_server.url)
        try:
            js = nc.jetstream()
            for trigger in triggers:
                stream = await js.stream_info(trigger["stream"])
                consumer = await js.consumer_info(trigger["stream"], trigger["consumer"])
                print(
                    f"{trigger['stream']}: subjects {stream.config.subjects}, "
                    f"consumer {consumer.name} (durable {consumer.config.durable_name})"
                )
                assert "console-test.flaky_job" in (stream.config.subjects or [])
                assert consumer.config.durable_name == trigger["consumer"]
        finally:
            await nc.close()

    asyncio.run(check())
