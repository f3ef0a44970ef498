"""The database from CloudNativePG: the chart's Cluster, valid for the operator's own CRD
(vendored in schemas/cloudnative-pg), and the pods' APP_DATABASE_URL from the Secret the
operator writes for it."""

from __future__ import annotations

import copy
import hashlib
import re
from pathlib import Path
from typing import Any

import helm_python
import jsonschema
import pytest
import yaml  # type: ignore[import-untyped]

from .conftest import CHART, RELEASE, Manifest, ci_values, one, render

CRD = Path(__file__).parent / "schemas" / "cloudnative-pg" / "postgresql.cnpg.io_clusters.yaml"
CLUSTER = f"{RELEASE}-qosmesh-db"
ONLY_NATS_MISSING = ["chart directory is missing these dependencies: nats"]


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` refusing fields it does not name, as the API server's strict field validation
    does (the CRD itself leaves them open: the API server prunes them silently)."""
    schema = copy.deepcopy(schema)

    def close(node: Any) -> None:
        if isinstance(node, dict):
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for child in node.values():
                close(child)
        elif isinstance(node, list):
            for child in node:
                close(child)

    close(schema)
    return schema


@pytest.fixture(scope="module")
def cluster_schema() -> jsonschema.Draft4Validator:
    crd = yaml.safe_load(CRD.read_text())
    assert crd["spec"]["group"] == "postgresql.cnpg.io"
    assert crd["spec"]["names"]["kind"] == "Cluster"
    (version,) = crd["spec"]["versions"]
    assert version["name"] == "v1"
    return jsonschema.Draft4Validator(strict(version["schema"]["openAPIV3Schema"]))


@pytest.fixture(scope="module")
def docs() -> list[Manifest]:
    return render(ci_values("cloudnativepg"))


def database_env(container: dict[str, Any]) -> dict[str, Any]:
    (env,) = [e for e in container.get("env", []) if e["name"] == "APP_DATABASE_URL"]
    return env  # type: ignore[no-any-return]


def test_the_vendored_crd_is_the_pinned_release():
    """The file is CloudNativePG's v1.30.0 CRD unchanged, as its README says."""
    data = CRD.read_bytes()
    blob = hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()
    readme = (CRD.parent / "README.md").read_text()
    assert f"git blob\n  {blob}" in readme
    assert hashlib.sha256(data).hexdigest() in readme
    assert "release v1.30.0" in readme
    assert "Apache License" in (CRD.parent / "LICENSE").read_text()


def test_cloudnativepg_values_render_a_cluster_with_the_database_asked_for(docs):
    cluster = one(docs, "Cluster")
    assert cluster["apiVersion"] == "postgresql.cnpg.io/v1"
    assert cluster["metadata"]["name"] == CLUSTER
    assert cluster["spec"] == {
        "instances": 3,
        "storage": {"size": "20Gi", "storageClass": "fast-ssd"},
        "bootstrap": {"initdb": {"database": "shop", "owner": "shop"}},
    }
    assert cluster["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}


def test_the_rendered_cluster_is_valid_for_cloudnativepgs_crd(docs, cluster_schema):
    cluster_schema.validate(one(docs, "Cluster"))
    everything = {
        "cloudnativepg": {
            "enabled": True,
            "instances": 1,
            "storage": {"size": "1Gi", "storageClass": "standard"},
            "database": "app",
            "owner": "app",
            "imageName": "ghcr.io/cloudnative-pg/postgresql:17.5",
            "keepOnUninstall": False,
        }
    }
    cluster = one(render(everything), "Cluster")
    assert cluster["spec"]["imageName"] == "ghcr.io/cloudnative-pg/postgresql:17.5"
    assert "annotations" not in cluster["metadata"]
    cluster_schema.validate(cluster)


@pytest.mark.parametrize(
    ("path", "value"),
    [(("spec", "instances"), 0), (("spec", "storage", "sizee"), "1Gi"), (("spec", "initdb"), {})],
    ids=["no-instances", "misspelt-field", "misplaced-field"],
)
def test_the_crd_schema_refuses_a_broken_cluster(docs, cluster_schema, path, value):
    """The check above can fail: a Cluster the operator's API would refuse is refused here."""
    cluster = copy.deepcopy(one(docs, "Cluster"))
    node = cluster
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        cluster_schema.validate(cluster)


def test_pods_read_the_database_url_from_the_uri_of_the_operators_app_secret(docs):
    """CloudNativePG writes the owner's connection URI into `<cluster>-app`, key `uri`."""
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    (migrate,) = pod["initContainers"]
    for container in (pod["containers"][0], migrate):
        assert database_env(container) == {
            "name": "APP_DATABASE_URL",
            "valueFrom": {"secretKeyRef": {"name": f"{CLUSTER}-app", "key": "uri"}},
        }
    assert not [d for d in docs if d["kind"] == "Secret"], "no Secret of the chart's own"


def test_existing_secret_still_serves_the_other_secrets_beside_the_operators_url():
    docs = render({**ci_values("cloudnativepg"), "existingSecret": "shop-secrets"})
    container = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert {"secretRef": {"name": "shop-secrets"}} in container["envFrom"]
    # An explicit env entry wins over the same key from envFrom.
    assert database_env(container)["valueFrom"]["secretKeyRef"]["name"] == f"{CLUSTER}-app"


def test_the_cluster_is_labelled_apart_from_the_services_pods(docs):
    """An operator copying the Cluster's labels onto its pods must not put PostgreSQL behind
    the service's selector."""
    labels = one(docs, "Cluster")["metadata"]["labels"]
    selector = one(docs, "Service")["spec"]["selector"]
    assert not selector.items() <= labels.items()
    assert labels["app.kubernetes.io/instance"] == RELEASE
    assert labels["app.kubernetes.io/component"] == "database"


def test_a_long_release_name_keeps_the_cluster_name_within_the_operators_limit():
    name = "a" * 63
    with helm_python.Chart.load(CHART) as chart:
        files = chart.render(ci_values("cloudnativepg"), name=name, namespace="x", is_install=True)
    docs = [d for p, t in files.items() if p.endswith(".yaml") for d in yaml.safe_load_all(t) if d]
    cluster = one(docs, "Cluster")["metadata"]["name"]
    assert len(cluster) <= 50  # the operator refuses longer ones
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", cluster)
    container = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert database_env(container)["valueFrom"]["secretKeyRef"]["name"] == f"{cluster}-app"


def test_default_values_are_refused_naming_both_ways_to_a_database():
    with pytest.raises(helm_python.HelmRenderError) as refused:
        render({})
    message = str(refused.value)
    assert "no database configured" in message
    assert "secrets.APP_DATABASE_URL" in message
    assert "cloudnativepg.enabled=true" in message


def test_a_database_url_and_cloudnativepg_together_are_refused():
    values = {**ci_values("cloudnativepg"), "secrets": {"APP_DATABASE_URL": "postgresql://x/y"}}
    with pytest.raises(helm_python.HelmRenderError, match="not both"):
        render(values)


def test_lint_is_strictly_clean_with_cloudnativepg():
    result = helm_python.lint(
        CHART, ci_values("cloudnativepg"), strict=True, kube_version="v1.30.0"
    )
    assert [m["error"] for m in result["messages"] if m["severity"] > 1] == ONLY_NATS_MISSING


@pytest.mark.parametrize(
    "bad",
    [
        {"storage": {"size": "ten gigs"}},
        {"instances": 0},
        {"database": "Shop-DB"},
        {"owner": ""},
        {"replicas": 3},
    ],
    ids=["size", "instances", "database", "owner", "unknown"],
)
def test_schema_refuses_bad_cloudnativepg_values(chart, bad):
    chart.validate_schema(ci_values("cloudnativepg"))
    values = {"cloudnativepg": {**ci_values("cloudnativepg")["cloudnativepg"], **bad}}
    with pytest.raises(helm_python.HelmValuesError, match="/cloudnativepg"):
        chart.validate_schema(values)
