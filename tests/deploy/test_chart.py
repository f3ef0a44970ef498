"""The Helm chart, rendered offline for each ci/ values file: valid Kubernetes objects,
hardened pods, probes, settings wiring, and a schema that refuses bad values."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import helm_python
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml  # type: ignore[import-untyped]

from app.settings import Settings
from app.transports.registry import BUILT_IN

from .conftest import CHART, NAMESPACE, RELEASE, Manifest, ci_values, one, render

VALUES_FILES = ["default", "external-nats", "ha", "observability", "nats-users", "cloudnativepg"]
SECRET_SETTINGS = {
    "APP_NATS_PASSWORD",
    "APP_NATS_TOKEN",
    "APP_ADMIN_TOKEN",
    "APP_REDIS_URL",
    "APP_DATABASE_URL",
}
# Set by the chart from its own values, never through `config`.
CHART_MANAGED = {
    "APP_NATS_SYNC",  # the embedded broker's; a chart's NATS is set in its own values
    "APP_HOST",
    "APP_DATA_DIR",
    "APP_NATS_URL",
    "APP_ADVERTISE_URL",
    "APP_NATS_USER",
    "APP_NATS_CREDS",
    "APP_NATS_TLS_CA",
    "APP_NATS_TLS_CERT",
    "APP_NATS_TLS_KEY",
}
SETTING_NAMES = {f"APP_{name.upper()}" for name in Settings.model_fields}
SELECTOR = {"app.kubernetes.io/name": "qosmesh", "app.kubernetes.io/instance": RELEASE}


def readme_settings() -> set[str]:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    return set(re.findall(r"^\| (APP_[A-Z0-9_]+) \|", readme, re.MULTILINE))


def container(docs: list[Manifest]) -> dict[str, Any]:
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["qosmesh"]
    result: dict[str, Any] = pod["containers"][0]
    return result


def config_data(docs: list[Manifest]) -> dict[str, str]:
    data: dict[str, str] = one(docs, "ConfigMap", "-qosmesh")["data"]
    return data


@pytest.mark.parametrize("values", VALUES_FILES)
def test_every_builtin_manifest_is_valid_for_kubernetes_1_30(rendered, values):
    docs = rendered(values)
    # Operators' resources, which kubernetes-validate has no schema for, are checked apart.
    operators = ("monitoring.coreos.com/", "postgresql.cnpg.io/")
    custom = [d for d in docs if d["apiVersion"].startswith(operators)]
    for doc in docs:
        if doc in custom:
            continue
        kubernetes_validate.validate(doc, "1.30", strict=True)
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "ServiceAccount", "ConfigMap", "Pod"} <= kinds
    # The nats subchart is declared but not downloaded: nothing of it is rendered.
    assert "StatefulSet" not in kinds


@pytest.mark.parametrize("values", VALUES_FILES)
def test_every_object_carries_the_standard_labels(rendered, values):
    for doc in rendered(values):
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["helm.sh/chart"] == "qosmesh-0.1.0"
    docs = rendered(values)
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["selector"]["matchLabels"] == SELECTOR
    assert SELECTOR.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert one(docs, "Service")["spec"]["selector"] == SELECTOR


def test_the_test_hook_pod_is_not_behind_the_service(rendered):
    pod = one(rendered("default"), "Pod")
    labels = pod["metadata"]["labels"]
    assert not SELECTOR.items() <= labels.items()
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    script = pod["spec"]["containers"][0]["command"][-1]
    assert f"http://{RELEASE}-qosmesh:80/readyz" in script
    assert pod["spec"]["restartPolicy"] == "Never"


@pytest.mark.parametrize("values", VALUES_FILES)
def test_pods_run_as_non_root_on_a_read_only_root_with_no_capabilities(rendered, values):
    docs = rendered(values)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    for c in [container(docs), one(docs, "Pod")["spec"]["containers"][0]]:
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] is True
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    mounts = {m["mountPath"]: m["name"] for m in container(docs)["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    data_dir = config_data(docs)["APP_DATA_DIR"]
    for path in (data_dir, "/tmp"):  # noqa: S108 (the pod's /tmp, an emptyDir)
        assert "emptyDir" in volumes[mounts[path]], f"{path} is not writable"


@pytest.mark.parametrize("values", VALUES_FILES)
def test_probes_use_readyz_for_readiness_and_healthz_for_liveness(rendered, values):
    c = container(rendered(values))
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    startup = c["startupProbe"]
    # Startup must outlast the first NATS connection attempt (APP_NATS_CONNECT_TIMEOUT).
    assert startup["periodSeconds"] * startup["failureThreshold"] > 10
    assert c["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]


@pytest.mark.parametrize("values", VALUES_FILES)
def test_grace_period_outlasts_prestop_and_the_apps_drain(rendered, values):
    docs = rendered(values)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    drain = float(config_data(docs).get("APP_DRAIN_TIMEOUT", "20"))
    pre_stop = int(container(docs)["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pod["terminationGracePeriodSeconds"] > drain + pre_stop


def test_chart_refuses_a_grace_period_shorter_than_the_drain():
    with pytest.raises(helm_python.HelmRenderError, match="terminationGracePeriodSeconds"):
        render({"terminationGracePeriodSeconds": 20, "config": {"APP_DRAIN_TIMEOUT": 30}})


@pytest.mark.parametrize("values", VALUES_FILES)
def test_settings_come_from_a_configmap_and_secrets_only_from_the_secret(rendered, values):
    docs = rendered(values)
    c = container(docs)
    config = config_data(docs)
    assert set(config) - {k for k in config if k.startswith("OTEL_")} <= SETTING_NAMES
    assert set(config) - {k for k in config if k.startswith("OTEL_")} <= readme_settings()
    assert not set(config) & SECRET_SETTINGS, "a secret setting in the ConfigMap"
    plain = [e for e in c["env"] if e["name"] in SECRET_SETTINGS and "valueFrom" not in e]
    assert plain == [], "a secret in plain env"
    sources = c["envFrom"]
    assert sources[0] == {"configMapRef": {"name": f"{RELEASE}-qosmesh"}}
    # The app's own; the bundled cluster's users file (natsUsers) is another's to read.
    secrets = [
        d
        for d in docs
        if d["kind"] == "Secret" and not d["metadata"]["name"].endswith("-nats-users")
    ]
    for secret in secrets:
        assert set(secret["data"]) <= SECRET_SETTINGS
    if secrets or ci_values(values).get("existingSecret"):
        name = ci_values(values).get("existingSecret") or f"{RELEASE}-qosmesh"
        assert sources[1:] == [{"secretRef": {"name": name}}]
    else:
        assert sources[1:] == []
    for doc in docs:
        if doc["kind"] not in ("Secret",):
            text = yaml.safe_dump(doc)
            assert "change-me" not in text, f"a secret value leaked into a {doc['kind']}"


def test_advertise_url_is_built_from_the_pod_ip(rendered):
    env = container(rendered("default"))["env"]
    names = [e["name"] for e in env]
    assert names.index("POD_IP") < names.index("APP_ADVERTISE_URL")
    pod_ip = env[names.index("POD_IP")]
    assert pod_ip["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert env[names.index("APP_ADVERTISE_URL")]["value"] == "http://$(POD_IP):8000"
    assert config_data(rendered("default"))["APP_HOST"] == "0.0.0.0"


def test_bundled_nats_cluster_gets_the_url_and_three_stream_replicas(rendered):
    config = config_data(rendered("ha"))
    assert config["APP_NATS_URL"] == f"nats://{RELEASE}-nats.{NAMESPACE}.svc:4222"
    assert config["APP_REPLICAS"] == "3"
    assert "APP_NATS_USER" not in config


def test_external_nats_with_user_password_creds_and_tls(rendered):
    docs = rendered("external-nats")
    values = ci_values("external-nats")
    config = config_data(docs)
    assert config["APP_NATS_URL"] == values["externalNats"]["url"]
    assert config["APP_NATS_USER"] == "orders"
    assert config["APP_SERVICE_NAME"] == "orders"
    assert config["APP_REPLICAS"] == "3"
    assert config["APP_NATS_CREDS"] == "/etc/qosmesh/nats-creds/orders.creds"
    assert json.loads(config["APP_QOS_OVERRIDES"]) == {
        "OrderPlaced": {"qos": 2, "transport": "jetstream"}
    }
    assert config["OTEL_EXPORTER_OTLP_ENDPOINT"].startswith("http://otel-collector")
    secret = one(docs, "Secret")
    decoded = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert decoded == {
        "APP_NATS_PASSWORD": "change-me",
        "APP_ADMIN_TOKEN": "admin-change-me-0123456789",
        "APP_REDIS_URL": values["secrets"]["APP_REDIS_URL"],
        "APP_DATABASE_URL": values["secrets"]["APP_DATABASE_URL"],
    }
    c = container(docs)
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/etc/qosmesh/nats-creds"]["readOnly"] is True
    assert Path(config["APP_NATS_TLS_CA"]).parent == Path("/etc/qosmesh/nats-tls")
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["nats-creds"]["secret"]["secretName"] == "orders-nats-creds"
    assert volumes["nats-tls"]["secret"]["secretName"] == "orders-nats-tls"


def test_settings_from_config_reach_the_app_as_valid_settings(rendered, monkeypatch):
    """The rendered ConfigMap and Secret, read by the real Settings class."""
    docs = rendered("external-nats")
    env = dict(config_data(docs))
    env.update({k: base64.b64decode(v).decode() for k, v in one(docs, "Secret")["data"].items()})
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.nats_servers == [u for u in env["APP_NATS_URL"].split(",")]
    assert settings.replicas == 3
    assert settings.qos_overrides["OrderPlaced"].qos == 2
    assert settings.admin_token is not None


def test_without_bundled_or_external_nats_the_chart_refuses_to_render():
    with pytest.raises(helm_python.HelmRenderError, match=r"externalNats\.url"):
        render({"nats": {"enabled": False}, "database": {"required": False}})


def test_a_domain_with_a_database_but_no_database_url_is_refused():
    with pytest.raises(helm_python.HelmRenderError, match="APP_DATABASE_URL"):
        render({"database": {"required": True}})
    assert one(render({"database": {"required": False}}), "Deployment")


def test_pods_migrate_the_schema_in_an_init_container_before_the_service_starts():
    migrating = {**ci_values("default"), "database": {"migrate": True}}
    pod = one(render(migrating), "Deployment")["spec"]["template"]["spec"]
    (migrate,) = pod["initContainers"]
    assert migrate["command"] == ["python", "-m", "app", "db", "upgrade"]
    assert migrate["image"] == pod["containers"][0]["image"]
    assert migrate["envFrom"] == pod["containers"][0]["envFrom"]  # the Secret with the URL
    assert migrate["securityContext"] == pod["containers"][0]["securityContext"]
    values = {**ci_values("default"), "database": {"migrate": False}}
    assert "initContainers" not in one(render(values), "Deployment")["spec"]["template"]["spec"]


def test_redis_transport_without_a_redis_url_is_refused():
    with pytest.raises(helm_python.HelmRenderError, match="APP_REDIS_URL"):
        render({"config": {"APP_QOS1_TRANSPORT": "redis"}})


def test_default_values_make_no_optional_objects(rendered):
    kinds = [d["kind"] for d in rendered("default")]
    assert kinds.count("Secret") == 1  # the database URL, the one value without a default
    for absent in ("HorizontalPodAutoscaler", "PodDisruptionBudget", "Ingress"):
        assert absent not in kinds
    assert "ServiceMonitor" not in kinds
    assert one(rendered("default"), "Deployment")["spec"]["replicas"] == 2


def test_ha_values_autoscale_from_three_with_a_disruption_budget_and_spread(rendered):
    docs = rendered("ha")
    deployment = one(docs, "Deployment")
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    strategy = deployment["spec"]["strategy"]
    assert strategy == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert hpa["spec"]["minReplicas"] == 3
    assert {m["resource"]["name"] for m in hpa["spec"]["metrics"]} == {"cpu", "memory"}
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"] == {"minAvailable": 2, "selector": {"matchLabels": SELECTOR}}
    spread = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert [s["topologyKey"] for s in spread] == [
        "topology.kubernetes.io/zone",
        "kubernetes.io/hostname",
    ]
    assert all(s["labelSelector"]["matchLabels"] == SELECTOR for s in spread)
    assert all(s["whenUnsatisfiable"] == "DoNotSchedule" for s in spread)
    ingress = one(docs, "Ingress")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": deployment["metadata"]["name"], "port": {"name": "http"}}
    assert container(docs)["envFrom"][1] == {"secretRef": {"name": "qosmesh-secrets"}}


def test_ha_deployment_as_rendered(rendered, capsys):
    """Prints the HA Deployment (run with -s to see it)."""
    deployment = one(rendered("ha"), "Deployment")
    with capsys.disabled():
        print("\n--- helm/qosmesh with ci/ha-values.yaml: Deployment ---")
        print(yaml.safe_dump(deployment, sort_keys=False), end="")
    assert deployment["metadata"]["name"] == f"{RELEASE}-qosmesh"


def test_service_monitor_scrapes_metrics_on_the_http_port(rendered):
    docs = rendered("observability")
    monitor = one(docs, "ServiceMonitor")
    # No schema for custom resources in kubernetes-validate: the required fields by hand.
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["name"] == f"{RELEASE}-qosmesh"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["selector"] == {"matchLabels": SELECTOR}
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "http"
    assert endpoint["path"] == "/metrics"
    assert endpoint["interval"] == "15s"
    assert endpoint["scrapeTimeout"] == "5s"
    ports = {p["name"] for p in one(docs, "Service")["spec"]["ports"]}
    assert endpoint["port"] in ports


def test_dashboard_configmap_carries_the_charts_dashboard_file(rendered):
    cm = one(rendered("observability"), "ConfigMap", "-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "qosmesh"}
    source = (CHART / "dashboards" / "qosmesh.json").read_text()
    assert json.loads(cm["data"]["qosmesh.json"]) == json.loads(source)
    assert json.loads(cm["data"]["qosmesh.json"])["title"] == "qosmesh"


def test_lint_is_clean_but_for_the_undownloaded_nats_dependency():
    for strict in (False, True):
        result = helm_python.lint(CHART, strict=strict, kube_version="v1.30.0")
        problems = [m for m in result["messages"] if m["severity"] > 1]
        assert [m["error"] for m in problems] == [
            "chart directory is missing these dependencies: nats"
        ]
    for name in VALUES_FILES:
        result = helm_python.lint(CHART, ci_values(name), kube_version="v1.30.0")
        problems = [m["error"] for m in result["messages"] if m["severity"] > 1]
        assert problems == ["chart directory is missing these dependencies: nats"], name


def test_nats_dependency_is_the_official_chart_under_a_condition(chart):
    (dependency,) = chart.metadata["dependencies"]
    assert dependency["name"] == "nats"
    assert dependency["repository"] == "https://nats-io.github.io/k8s/helm/charts/"
    assert dependency["condition"] == "nats.enabled"
    assert dependency["version"].startswith("^1.")
    assert chart.metadata["apiVersion"] == "v2"
    assert not (CHART / "charts").exists(), "other projects' charts are not vendored"
    nats = chart.values["nats"]
    assert nats["config"]["cluster"] == {"enabled": True, "replicas": 3}
    assert nats["config"]["jetstream"]["enabled"] is True
    assert nats["config"]["jetstream"]["fileStore"]["enabled"] is True
    assert nats["config"]["jetstream"]["fileStore"]["pvc"]["enabled"] is True
    assert nats["config"]["jetstream"]["merge"] == {"sync_interval": "always"}


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"replicaCount": "three"}, "replicaCount"),
        ({"replicas": 3}, "additional properties"),
        ({"config": {"APP_NO_SUCH_SETTING": "1"}}, "APP_NO_SUCH_SETTING"),
        ({"config": {"APP_NATS_PASSWORD": "in-a-configmap"}}, "APP_NATS_PASSWORD"),
        ({"config": {"APP_LOG_LEVEL": "LOUD"}}, "APP_LOG_LEVEL"),
        ({"config": {"APP_REPLICAS": 7}}, "APP_REPLICAS"),
        ({"secrets": {"APP_LOG_LEVEL": "DEBUG"}}, "APP_LOG_LEVEL"),
        ({"otel": {"NOT_OTEL": "x"}}, "NOT_OTEL"),
        ({"securityContext": {"runAsNonRoot": False}}, "runAsNonRoot"),
        ({"externalNats": {"url": "http://nats:4222"}}, "url"),
        ({"service": {"port": 0}}, "port"),
        ({"autoscaling": {"enabled": "yes"}}, "enabled"),
        ({"secrets": {"APP_ADMIN_TOKEN": "too-short"}}, "APP_ADMIN_TOKEN"),
    ],
)
def test_schema_rejects_invalid_values(chart, values, complaint):
    with pytest.raises(helm_python.HelmValuesError, match=complaint):
        chart.validate_schema(values)


@pytest.mark.parametrize("values", VALUES_FILES)
def test_schema_accepts_every_ci_values_file(chart, values):
    chart.validate_schema(ci_values(values))


def test_schema_config_covers_every_setting_and_only_real_ones(chart):
    """Every APP_* setting is either configurable, a secret, or set by the chart."""
    schema = chart.schema
    assert schema is not None
    configurable = set(schema["properties"]["config"]["properties"])
    secrets = set(schema["properties"]["secrets"]["properties"])
    assert configurable <= SETTING_NAMES
    assert secrets == SECRET_SETTINGS
    assert configurable | secrets | CHART_MANAGED == SETTING_NAMES
    assert not configurable & (CHART_MANAGED | SECRET_SETTINGS)
    assert set(chart.values["config"]) <= configurable


def test_schema_offers_the_transports_the_registry_knows(chart):
    """A transport added to app/transports/registry.py is added to the chart's choices too."""
    config = chart.schema["properties"]["config"]["properties"]
    names = {spec.name for spec in BUILT_IN}
    for level in ("APP_QOS0_TRANSPORT", "APP_QOS1_TRANSPORT", "APP_QOS2_TRANSPORT"):
        assert {n for n in config[level]["enum"] if n} == names, level
    override = config["APP_QOS_OVERRIDES"]["additionalProperties"]["properties"]["transport"]
    assert set(override["enum"]) == names


def test_schema_covers_every_value():
    """No value in values.yaml is left out of values.schema.json."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())

    def walk(value: Any, node: dict[str, Any], path: str) -> None:
        # Maps (no `properties`) and the nats subchart's own values stop the walk.
        if not isinstance(value, dict) or "properties" not in node or path == "nats.":
            return
        for key, child in value.items():
            assert key in node["properties"], f"{path}{key} has no schema"
            walk(child, node["properties"][key], f"{path}{key}.")

    walk(values, schema, "")
    assert schema["additionalProperties"] is False
