"""Least privilege on NATS, against a real nats-server: two services (`billing` consumes the events
of `orders`) run with nothing but the permissions `python -m app nats-permissions` prints for
each, and a client of a third service's user is refused their subjects, streams, buckets and
inboxes (docs/security.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import nats
import pytest

from app.brokers.embedded import NatsServer, find_binary
from app.brokers.permissions import Permissions
from app.cli.nats_permissions import derive, render
from app.errors import ConfigurationError
from app.instance.declared import declared_bus
from app.settings import Settings
from app.testing import ServiceProcess, eventually

ROOT = Path(__file__).resolve().parents[2]
DOMAIN = "tests.hardening.ledger_domain"
ADMIN_TOKEN = "admin-token-0123456789abcdef"
SERVICES = {
    "orders": {"APP_DOMAIN": DOMAIN},
    # The fallback scheduler: its stream, its ordered consumer and its lease run too.
    "billing": {"APP_DOMAIN": DOMAIN, "APP_SCHEDULER": "fallback", "APP_MAX_DELIVER": "1"},
    "audit": {"APP_DOMAIN": ""},  # the third user: a service with no messages of its own
}
DENIED = 0.5  # seconds a refused request waits: the server drops it and answers nothing


def password(service: str) -> str:
    return f"{service}-nats-pw"


def printed_permissions(service: str, cwd: Path) -> str:
    """What `python -m app nats-permissions` prints for the service, run as an operator would."""
    settings = {k: v for k, v in os.environ.items() if not k.startswith("APP_")}
    env = {**settings, **SERVICES[service], "APP_SERVICE_NAME": service, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "app", "nats-permissions"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def auth_config(blocks: dict[str, str]) -> str:
    """nats-server's users: each service with its printed block, and an operator allowed all."""
    users = [f'{{ user: "{s}", password: "{password(s)}"\n{b}\n}}' for s, b in blocks.items()]
    users.append(f'{{ user: "ops", password: "{password("ops")}" }}')
    return "authorization {\n  users = [\n" + "\n".join(users) + "\n  ]\n}\n"


@dataclass
class Mesh:
    server: NatsServer
    orders: ServiceProcess
    billing: ServiceProcess
    ledger: Path

    def violations(self, user: str) -> list[str]:
        """The server's log lines for what it refused `user`."""
        log = (self.server.store_dir / f"{self.server.name}.log").read_text(errors="replace")
        return [line for line in log.splitlines() if "Violation" in line and f"user:{user}" in line]

    def ledger_lines(self) -> set[str]:
        return set(self.ledger.read_text().splitlines()) if self.ledger.exists() else set()


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    root = tmp_path_factory.mktemp("nats-users")
    config = root / "users.conf"
    config.write_text(auth_config({s: printed_permissions(s, root) for s in SERVICES}))
    server = NatsServer(root / "nats", extra_args=["-c", str(config)])
    server.start()
    ledger = root / "ledger"
    started: list[ServiceProcess] = []
    try:
        for name in ("orders", "billing"):
            env = {
                **SERVICES[name],
                "APP_SERVICE_NAME": name,
                "APP_NATS_URL": server.url,
                "APP_NATS_USER": name,
                "APP_NATS_PASSWORD": password(name),
                "APP_ADMIN_TOKEN": ADMIN_TOKEN,
                "APP_NODE_TTL": "3",
                "LEDGER_FILE": str(ledger),
                "PYTHONPATH": str(ROOT),
            }
            started.append(ServiceProcess(root / name, env).start(wait=None))
        for service in started:
            service.wait_for("/readyz", timeout=60)
        yield Mesh(server, started[0], started[1], ledger)
    finally:
        for service in started:
            service.stop()
        server.stop()


@pytest.mark.slow
async def test_two_services_work_with_only_their_printed_permissions(mesh: Mesh):
    async with httpx.AsyncClient(timeout=10) as client:
        for note, delay in (("a", 0), ("b", 0), ("later", 1), ("poison", 0)):
            answer = await client.post(
                f"{mesh.orders.url}/notes", json={"note": note, "delay": delay}
            )
            assert answer.status_code == 202
        expected = {f"{kind} {note}" for kind in ("noted", "settled", "pinged") for note in "ab"}
        expected.add("noted later")  # delayed on the server's schedules, then consumed
        await eventually(lambda: expected <= mesh.ledger_lines(), 20, message="every note handled")

        for one, other in ((mesh.orders, "billing"), (mesh.billing, "orders")):
            nodes = (await client.get(f"{one.url}/nodes")).json()["nodes"]
            assert other in {node["service"] for node in nodes}, "each sees the other"

        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

        async def dead_letters() -> list[dict[str, Any]]:
            page = await client.get(f"{mesh.billing.url}/admin/dlq", headers=admin)
            items: list[dict[str, Any]] = page.json()["items"]
            return items

        async def both_poisons_dead() -> bool:
            return len(await dead_letters()) == 2

        await eventually(both_poisons_dead, 20, message="the poison notes dead-lettered")
        # A replay publishes on the subject of `orders` it came from: it fails again, and is kept.
        noted = next(d for d in await dead_letters() if d["type"] == "OrderNoted")
        replay = await client.post(
            f"{mesh.billing.url}/admin/dlq/{noted['dlq_id']}/replay", headers=admin
        )
        assert replay.status_code == 202

        async def dead_again() -> bool:
            return any(d["message_id"] == noted["message_id"] for d in await dead_letters())

        await eventually(dead_again, 20, message="the replayed note dead-lettered again")

    nc = await nats.connect(mesh.server.url, user="ops", password=password("ops"))
    try:
        for service in ("orders", "billing"):  # $SRV answers go back on the asker's inbox
            reply = await nc.request(f"$SRV.PING.{service}", b"", timeout=5)
            assert json.loads(reply.data)["name"] == service
    finally:
        await nc.close()
    assert mesh.violations("orders") == []
    assert mesh.violations("billing") == []


@pytest.mark.slow
async def test_a_third_user_cannot_touch_their_subjects_streams_or_buckets(mesh: Mesh):
    """Only the discovery bucket is shared: every service reads it, and writes its own keys."""
    errors: list[str] = []

    async def collect(error: Exception) -> None:
        errors.append(str(error).lower())

    ops = await nats.connect(mesh.server.url, user="ops", password=password("ops"))
    nc = await nats.connect(
        mesh.server.url,
        user="audit",
        password=password("audit"),
        inbox_prefix="_INBOX_audit",
        error_cb=collect,
    )
    js = nc.jetstream(timeout=DENIED)
    refused: dict[str, Callable[[], Awaitable[Any]]] = {
        "orders.order_noted": lambda: js.publish("orders.order_noted", b"{}", timeout=DENIED),
        "$JS.API.STREAM.INFO.ORDERS_ORDER_NOTED": lambda: js.stream_info("ORDERS_ORDER_NOTED"),
        "$JS.API.STREAM.MSG.GET.ORDERS_ORDER_NOTED": lambda: js.get_msg("ORDERS_ORDER_NOTED", 1),
        "$JS.API.CONSUMER.DURABLE.CREATE.ORDERS_ORDER_NOTED.audit__spy": lambda: js.add_consumer(
            "ORDERS_ORDER_NOTED", durable_name="audit__spy"
        ),
        "$JS.API.STREAM.MSG.GET.BILLING_DLQ": lambda: js.get_msg("BILLING_DLQ", 1),
        "$JS.API.STREAM.INFO.KV_billing_processed": lambda: js.key_value("billing_processed"),
        "$JS.API.DIRECT.GET.KV_orders_leases.$KV.orders_leases.x": lambda: nc.request(
            "$JS.API.DIRECT.GET.KV_orders_leases.$KV.orders_leases.x", b"", timeout=DENIED
        ),
        "$KV.qosmesh_nodes.orders.spy": lambda: nc.request(
            "$KV.qosmesh_nodes.orders.spy", b"{}", timeout=DENIED
        ),
    }
    not_subscribed = ("orders.order_pinged", "_INBOX_billing.>", "$SRV.PING.orders")
    try:
        stored = (await ops.jetstream().stream_info("ORDERS_ORDER_NOTED")).state.messages
        for attempt in refused.values():
            with pytest.raises(TimeoutError):  # the server drops a refused request
                await attempt()
        await nc.publish("orders.order_noted", b"{}")
        for subject in not_subscribed:
            await nc.subscribe(subject)
        await nc.flush()
        # The bucket every service shares answers this user: the refusals above are theirs.
        await nc.jetstream(timeout=5).key_value("qosmesh_nodes")
        expected = [f'violation for publish to "{s.lower()}"' for s in refused]
        expected += [f'violation for subscription to "{s.lower()}"' for s in not_subscribed]

        def every_refusal_told() -> bool:
            return all(any(e in error for error in errors) for e in expected)

        await eventually(every_refusal_told, 5, message=f"every refusal told: {errors}")
        after = (await ops.jetstream().stream_info("ORDERS_ORDER_NOTED")).state.messages
        assert after == stored, "nothing of the third user reached the stream of orders"
    finally:
        await nc.close()
        await ops.close()


# -- what is derived, without a server ----------------------------------------------------------


async def permissions_of(service: str, **settings: Any) -> Permissions:
    values = {"service_name": service, "domain": DOMAIN, **settings}
    return await derive(Settings.model_validate(values))


async def test_the_owner_keeps_its_streams_and_a_consumer_only_its_consumers_on_them():
    orders, billing = await permissions_of("orders"), await permissions_of("billing")
    assert "$JS.API.STREAM.PURGE.ORDERS_ORDER_NOTED" in orders.publish
    assert "orders.order_noted.sched.*" in orders.publish  # delayed on the server's schedules
    assert "orders.order_pinged" in orders.publish
    assert "orders.order_pinged" not in orders.subscribe
    consumer = "$JS.API.CONSUMER.MSG.NEXT.ORDERS_ORDER_NOTED.billing__order_noted"
    assert consumer in billing.publish
    assert "$JS.API.CONSUMER.MSG.NEXT.ORDERS_ORDER_SETTLED.*" in billing.publish  # per instance
    assert "$JS.API.STREAM.CREATE.ORDERS_ORDER_NOTED" in billing.publish  # the same config
    assert "orders.order_noted" in billing.publish  # a dead letter replayed where it came from
    assert "orders.order_pinged" in billing.subscribe
    for owners in ("PURGE", "MSG.DELETE"):
        assert not [s for s in billing.publish if s.startswith(f"$JS.API.STREAM.{owners}.ORDERS")]
    assert "$KV.qosmesh_nodes.billing.*" in billing.publish
    assert not [s for s in billing.publish if s.startswith("$KV.orders")]
    assert billing.allow_responses


async def test_inboxes_follow_the_prefix_and_the_scheduler_its_stores():
    custom = await permissions_of("orders", nats_inbox_prefix="replies.orders")
    assert "replies.orders.>" in custom.subscribe
    assert not [s for s in custom.subscribe if s.startswith("_INBOX")]
    native = await permissions_of("orders", scheduler="native")
    fallback = await permissions_of("orders", scheduler="fallback")
    assert not [s for s in native.publish if "QM-SCHEDULED" in s]
    assert "$JS.API.STREAM.CREATE.QM-SCHEDULED-ORDERS" in fallback.publish
    assert "orders.order_noted.sched.*" not in fallback.publish


async def test_a_domain_that_uses_the_brokers_in_setup_is_told_so():
    domain = ModuleType("uses_brokers")

    async def setup(bus: Any, brokers: Any, settings: Any) -> None:
        await brokers.js.key_value("mine")

    domain.setup = setup  # type: ignore[attr-defined]
    settings = Settings.model_validate({"service_name": "orders", "domain": ""})
    with pytest.raises(ConfigurationError, match=r"brokers\.js"):
        await declared_bus(settings, domain)


async def test_the_printed_block_is_a_valid_nats_server_configuration(tmp_path):
    settings = Settings.model_validate({"service_name": "orders", "domain": DOMAIN})
    permissions = await derive(settings)
    block = render(settings, permissions, "conf")
    config = tmp_path / "nats.conf"
    config.write_text(auth_config({"orders": block}))
    checked = subprocess.run(
        [str(find_binary("nats-server")), "-c", str(config), "-t"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr
    helm = json.loads(render(settings, permissions, "helm"))["natsUsers"]
    assert helm == {"enabled": True, "user": "orders", "permissions": permissions.as_dict()}
    assert json.loads(render(settings, permissions, "json"))["allow_responses"] is True
