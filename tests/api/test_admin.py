"""`/admin/dlq` over HTTP: the token rules, paging, show, delete and replay; and the CLI."""

import json
import subprocess
import sys

import httpx
import pytest

from app.messages import QoS, encode
from app.services import services_of
from app.testing import running_app
from app.transports.jetstream.dead_letters import JetStreamDeadLetters
from tests.transports.conftest import Ping

TOKEN = "s3cret-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def add_dead_letters(app, count: int) -> list[Ping]:
    store = services_of(app).bus.dead_letters[0]
    assert isinstance(store, JetStreamDeadLetters)
    pings = [Ping(n=n) for n in range(count)]
    for seq, ping in enumerate(pings, start=1):
        envelope = encode(ping, QoS.AT_LEAST_ONCE, "qosmesh.ping")
        await store.add(
            envelope,
            stream="QOSMESH_PING",
            seq=seq,
            consumer="qosmesh__ping",
            reason="max_deliveries",
            error="ValueError: boom",
            deliveries=5,
        )
    return pings


@pytest.fixture
async def admin(settings_for, nats_server):
    settings = settings_for(nats_url=nats_server.url, admin_token=TOKEN)
    async with (
        running_app(settings) as (app, url),
        httpx.AsyncClient(base_url=url) as client,
    ):
        yield app, client


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": TOKEN},
        {"Authorization": f"Bearer {TOKEN}x"},
    ],
)
async def test_admin_needs_the_right_bearer_token(admin, headers):
    _, client = admin
    for method, path in [
        ("GET", "/admin/dlq"),
        ("GET", "/admin/dlq/js-1"),
        ("DELETE", "/admin/dlq/js-1"),
        ("POST", "/admin/dlq/js-1/replay"),
    ]:
        response = await client.request(method, path, headers=headers)
        assert response.status_code == 401, (method, path)
        assert response.headers["WWW-Authenticate"] == "Bearer"


async def test_admin_is_off_without_a_configured_token(settings_for, nats_server):
    settings = settings_for(nats_url=nats_server.url)
    async with running_app(settings) as (_, url), httpx.AsyncClient(base_url=url) as client:
        assert (await client.get("/admin/dlq")).status_code == 404
        assert (await client.get("/admin/dlq", headers=AUTH)).status_code == 404


@pytest.mark.parametrize("blank", ["", "   ", "\t"])
async def test_a_blank_admin_token_leaves_admin_off(settings_for, nats_server, monkeypatch, blank):
    """`APP_ADMIN_TOKEN=` must not become a token that an empty bearer matches."""
    monkeypatch.setenv("APP_ADMIN_TOKEN", blank)
    settings = settings_for(nats_url=nats_server.url)
    assert settings.admin_token is None
    async with running_app(settings) as (_, url), httpx.AsyncClient(base_url=url) as client:
        for headers in ({}, {"Authorization": "Bearer"}):
            assert (await client.get("/admin/dlq", headers=headers)).status_code == 404


async def test_dead_letters_page_newest_first(admin):
    app, client = admin
    pings = await add_dead_letters(app, 5)
    first = (await client.get("/admin/dlq?limit=2", headers=AUTH)).json()
    assert first["total"] == 5
    assert [i["message_id"] for i in first["items"]] == [pings[4].message_id, pings[3].message_id]
    item = first["items"][0]
    assert item["type"] == "Ping"
    assert item["subject"] == "qosmesh.ping"
    assert item["transport"] == "jetstream"
    assert item["deliveries"] == 5
    assert item["error"] == "ValueError: boom"
    assert item["dlq_id"].startswith("js-")
    rest = []
    cursor = first["next_cursor"]
    while cursor:
        page = (await client.get(f"/admin/dlq?limit=2&cursor={cursor}", headers=AUTH)).json()
        rest += page["items"]
        cursor = page["next_cursor"]
    assert [i["message_id"] for i in rest] == [p.message_id for p in reversed(pings[:3])]


async def test_show_delete_and_replay(admin):
    app, client = admin
    pings = await add_dead_letters(app, 2)
    listing = (await client.get("/admin/dlq", headers=AUTH)).json()["items"]
    newest, oldest = listing[0]["dlq_id"], listing[1]["dlq_id"]

    shown = (await client.get(f"/admin/dlq/{newest}", headers=AUTH)).json()
    assert shown["headers"]["qm-id"] == pings[1].message_id
    assert json.loads(shown["body"])["n"] == 1

    assert (await client.delete(f"/admin/dlq/{newest}", headers=AUTH)).status_code == 204
    assert (await client.get(f"/admin/dlq/{newest}", headers=AUTH)).status_code == 404

    replayed = await client.post(f"/admin/dlq/{oldest}/replay", headers=AUTH)
    assert replayed.status_code == 202
    assert replayed.json()["message_id"] == pings[0].message_id
    js = services_of(app).brokers.js
    republished = await js.get_last_msg("QOSMESH_PING", "qosmesh.ping")
    assert republished.headers is not None
    assert republished.headers["qm-id"] == pings[0].message_id
    assert (await client.get("/admin/dlq", headers=AUTH)).json()["total"] == 0


@pytest.mark.parametrize("dlq_id", ["js-999", "rd-1", "nonsense", "js-abc"])
async def test_unknown_dead_letter_is_404(admin, dlq_id):
    _, client = admin
    assert (await client.get(f"/admin/dlq/{dlq_id}", headers=AUTH)).status_code == 404
    assert (await client.delete(f"/admin/dlq/{dlq_id}", headers=AUTH)).status_code == 404


@pytest.mark.slow
async def test_cli_mirrors_the_admin_api(admin, nats_server, tmp_path):
    app, _ = admin
    pings = await add_dead_letters(app, 1)
    env = {"APP_NATS_URL": nats_server.url, "APP_DATA_DIR": str(tmp_path), "PATH": "/usr/bin"}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "app", "dlq", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )

    listed = json.loads(cli("list").stdout)
    assert listed["total"] == 1
    dlq_id = listed["items"][0]["dlq_id"]
    assert json.loads(cli("show", dlq_id).stdout)["message_id"] == pings[0].message_id
    assert json.loads(cli("replay", dlq_id).stdout)["message_id"] == pings[0].message_id
    missing = cli("delete", dlq_id)
    assert missing.returncode == 1
    assert "DeadLetterNotFoundError" in missing.stderr
