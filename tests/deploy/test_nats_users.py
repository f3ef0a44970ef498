"""The chart's NATS users on the bundled cluster (natsUsers): the service connects as its own user,
with the password of its Secret, and the users file the chart writes for the cluster holds what
`python -m app nats-permissions` prints. The NATS subchart is not downloaded, so the rendered
users file is given to a real nats-server the way the `nats` values make the cluster include it."""

from __future__ import annotations

import base64
import copy
from pathlib import Path
from typing import Any

import helm_python
import httpx
import nats
import pytest

from app.brokers.embedded import NatsServer, free_port
from app.cli.nats_permissions import derive
from app.settings import Settings
from app.testing import eventually, running_app

from .conftest import RELEASE, ci_values, one, render

VALUES = "nats-users"


def users_values(**extra: Any) -> dict[str, Any]:
    values = copy.deepcopy(ci_values(VALUES))
    values["natsUsers"].update(extra)
    return values


def secret_data(docs: list[dict[str, Any]], name: str) -> dict[str, str]:
    data = one(docs, "Secret", name)["data"]
    return {key: base64.b64decode(value).decode() for key, value in data.items()}


def test_nats_users_are_off_by_default(rendered):
    docs = rendered("default")
    assert not [d for d in docs if d["metadata"]["name"].endswith("-nats-users")]
    assert "APP_NATS_USER" not in one(docs, "ConfigMap", "-qosmesh")["data"]


async def test_the_ci_permissions_are_ones_the_command_prints():
    """The ci file lists what a service with no messages of its own needs (a domain's messages
    add theirs): every subject of it is one the command prints for its settings. Regenerate it
    with `APP_SERVICE_NAME=shop APP_DOMAIN= python -m app nats-permissions --format helm`."""
    values = ci_values(VALUES)
    name = values["config"]["APP_SERVICE_NAME"]
    bare = await derive(Settings.model_validate({"service_name": name, "domain": ""}))
    assert values["natsUsers"]["permissions"] == bare.as_dict()
    deployed = await derive(Settings.model_validate({"service_name": name}))  # its domain too
    assert set(bare.publish) <= set(deployed.publish)
    assert set(bare.subscribe) <= set(deployed.subscribe)


def test_the_service_connects_as_its_user_with_the_password_of_its_secret():
    docs = render(ci_values(VALUES))
    assert one(docs, "ConfigMap", "-qosmesh")["data"]["APP_NATS_USER"] == "shop"
    password = secret_data(docs, f"{RELEASE}-qosmesh")["APP_NATS_PASSWORD"]
    users = secret_data(docs, f"{RELEASE}-nats-users")["users.conf"]
    assert f'"password":"{password}"' in users
    assert '"user":"shop"' in users
    assert "\\u003e" not in users, "nats-server reads no \\u escapes"


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"nats": {"enabled": False}, "externalNats": {"url": "nats://n:4222"}}, "bundled"),
        ({"existingSecret": "mine"}, "existingSecret"),
        ({"secrets": {"APP_NATS_PASSWORD": ""}}, "APP_NATS_PASSWORD"),
        ({"natsUsers": {"enabled": True, "permissions": {}}}, "nats-permissions"),
    ],
)
def test_the_chart_refuses_nats_users_it_cannot_wire(values, complaint):
    merged = ci_values(VALUES)
    for key, value in values.items():
        merged[key] = {**merged.get(key, {}), **value} if isinstance(value, dict) else value
    with pytest.raises(helm_python.HelmRenderError, match=complaint):
        render(merged)


@pytest.mark.slow
async def test_the_rendered_users_file_admits_the_service_and_keeps_others_apart(tmp_path: Path):
    """The service starts and becomes ready as its user; another service's user on the same
    cluster cannot write the service's keys."""
    shop = await derive(Settings.model_validate({"service_name": "shop", "domain": ""}))
    other = await derive(Settings.model_validate({"service_name": "billing", "domain": ""}))
    billing = {"user": "billing", "password": "billing-pw", "permissions": other.as_dict()}
    values = users_values(permissions=shop.as_dict(), otherUsers=[billing])
    docs = render(values)
    config_dir, users_dir = tmp_path / "etc" / "nats-config", tmp_path / "etc" / "nats-users"
    include = values["nats"]["config"]["merge"]["00$include"]  # relative to the nats.conf
    (config_dir / include).parent.mkdir(parents=True)
    (config_dir / include).write_text(secret_data(docs, "-nats-users")["users.conf"])
    (config_dir / "nats.conf").write_text(f"include {include}\n")
    assert (users_dir / "users.conf").exists()
    server = NatsServer(tmp_path / "store", extra_args=["-c", str(config_dir / "nats.conf")])
    server.start()
    try:
        env = {**one(docs, "ConfigMap", "-qosmesh")["data"], **secret_data(docs, "-qosmesh")}
        settings = Settings.model_validate(
            {
                **{key[4:].lower(): value for key, value in env.items()},
                "domain": "",  # as the permissions were printed for
                "nats_url": server.url,  # the bundled cluster's, here
                "host": "127.0.0.1",
                "port": free_port(),
                "data_dir": tmp_path / "data",
                "replicas": 1,
            }
        )
        async with running_app(settings) as (_, url), httpx.AsyncClient(base_url=url) as client:

            async def ready() -> bool:
                return (await client.get("/readyz")).status_code == 200

            await eventually(ready, 20, message="ready as its NATS user")
            errors: list[str] = []

            async def collect(error: Exception) -> None:
                errors.append(str(error))

            nc = await nats.connect(
                server.url, user="billing", password="billing-pw", error_cb=collect
            )
            await nc.publish("$KV.qosmesh_nodes.shop.spoofed", b"{}")
            await nc.flush()
            await eventually(lambda: bool(errors), 5, message="the refusal")
            await nc.close()
        assert 'violation for publish to "$kv.qosmesh_nodes.shop.spoofed"' in errors[0].lower()
        log = (server.store_dir / "nats-server.log").read_text()
        assert "user:shop" not in "".join(line for line in log.splitlines() if "Violation" in line)
    finally:
        server.stop()
