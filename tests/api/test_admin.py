"""`/admin/dlq` over HTTP: the token rules, paging, show, delete and replay; and the CLI,
`python -m app dlq`, against the same brokers."""

import io
import json
import re
import subprocess
import sys

import httpx
import pytest

from app.cli import dlq
from app.cli.commands import build_parser
from app.instance.services import services_of
from app.messages import QoS, encode
from app.qos.dead_letters import Failure
from app.testing import eventually, running_app
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
            failure=Failure("max_deliveries", "ValueError: boom", "ValueError"),
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
        ("GET", "/admin/dlq/groups"),
        ("GET", "/admin/dlq/groups/0123456789abcdef"),
        ("POST", "/admin/dlq/groups/0123456789abcdef/replay"),
        ("POST", "/admin/dlq/groups/0123456789abcdef/discard"),
    ]:
        response = await client.request(method, path, headers=headers)
        assert response.status_code == 401, (method, path)
        assert response.headers["WWW-Authenticate"] == "Bearer"


async def test_admin_is_off_without_a_configured_token(settings_for, nats_server):
    settings = settings_for(nats_url=nats_server.url)
    async with running_app(settings) as (_, url), httpx.AsyncClient(base_url=url) as client:
        assert (await client.get("/admin/dlq")).status_code == 404
        assert (await client.get("/admin/dlq", headers=AUTH)).status_code == 404
        assert (await client.get("/admin/dlq/groups", headers=AUTH)).status_code == 404
        path = "/admin/dlq/groups/0123456789abcdef/replay"
        assert (await client.post(path, headers=AUTH)).status_code == 404


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

    listed = json.loads(cli("list", "--json").stdout)
    assert listed["total"] == 1
    dlq_id = listed["items"][0]["dlq_id"]
    assert json.loads(cli("show", dlq_id, "--json").stdout)["message_id"] == pings[0].message_id
    replayed = cli("replay", dlq_id).stdout.splitlines()
    assert replayed[0] == f"{dlq_id}: replayed as message {pings[0].message_id}"
    for action in ("discard", "delete"):  # delete: discard's former name, still taken
        missing = cli(action, dlq_id)
        assert missing.returncode == 1
        assert (
            missing.stderr == f'no dead letter "{dlq_id}": python -m app dlq list shows the ids\n'
        )


async def dlq_cli(settings, *argv: str) -> tuple[int, str]:
    """`python -m app dlq ARGV` in this process, against `settings`' brokers: its exit code
    and what it printed on stdout."""
    out = io.StringIO()
    code = await dlq.run(settings, build_parser().parse_args(["dlq", *argv]), out)
    return code, out.getvalue()


async def test_cli_lists_dead_letters_as_a_table_and_says_how_to_page(
    admin, settings_for, nats_server
):
    app, _ = admin
    pings = await add_dead_letters(app, 3)
    settings = settings_for(nats_url=nats_server.url)
    code, shown = await dlq_cli(settings, "list", "--limit", "2")
    assert code == 0
    header, newest, older, count, more = shown.splitlines()
    assert re.split(r"\s{2,}", header) == list(dlq.COLUMNS)
    assert newest.split()[:6] == [
        "js-3",
        "Ping",
        "qosmesh.ping",
        "max_deliveries",
        "ValueError",
        "5",
    ]
    assert older.split()[0] == "js-2"
    assert count == "2 of 3 dead letters, newest first"
    assert more == "next page: python -m app dlq list --limit 2 --cursor js-1"
    code, rest = await dlq_cli(settings, *more.split()[6:])  # after "next page: python -m app dlq"
    assert [line.split()[0] for line in rest.splitlines()[1:2]] == ["js-1"]
    assert "next page" not in rest

    code, page = await dlq_cli(settings, "list", "--limit", "2", "--json")
    listed = json.loads(page)
    assert listed["total"] == 3
    assert [item["message_id"] for item in listed["items"]] == [
        pings[2].message_id,
        pings[1].message_id,
    ]
    assert listed["next_cursor"] == "js-1"


async def test_cli_shows_a_dead_letter_as_a_record_and_as_json(admin, settings_for, nats_server):
    app, _ = admin
    pings = await add_dead_letters(app, 1)
    settings = settings_for(nats_url=nats_server.url)
    code, shown = await dlq_cli(settings, "show", "js-1")
    assert code == 0
    lines = shown.splitlines()
    assert lines[0] == "dead letter js-1"
    assert f"  message id  {pings[0].message_id}" in lines
    assert "  error       ValueError: boom" in lines
    assert "  reason      max_deliveries, after 5 deliveries" in lines
    assert '    "n": 0' in lines  # the body, as indented JSON
    assert not [line for line in lines if "qm-dlq-" in line]  # the record's headers are fields
    assert lines[-1] == (
        "python -m app dlq replay js-1 sends it again; python -m app dlq discard js-1 drops it"
    )
    code, as_json = await dlq_cli(settings, "show", "js-1", "--json")
    assert json.loads(as_json)["headers"]["qm-id"] == pings[0].message_id


async def test_cli_replays_several_ids_and_every_one_of_a_type(
    admin, settings_for, nats_server, capsys
):
    """Each id is a line; an unknown one says so on stderr and the others are replayed."""
    app, client = admin
    pings = await add_dead_letters(app, 4)
    settings = settings_for(nats_url=nats_server.url)
    code, shown = await dlq_cli(settings, "replay", "js-1", "js-404", "js-3")
    assert code == 1
    assert shown.splitlines() == [
        f"js-1: replayed as message {pings[0].message_id}",
        f"js-3: replayed as message {pings[2].message_id}",
        "if one fails again, python -m app dlq list shows it (under a new id)",
    ]
    assert (
        capsys.readouterr().err == 'no dead letter "js-404": python -m app dlq list shows the ids\n'
    )

    assert (await dlq_cli(settings, "replay", "--all", "--type", "Other")) == (
        0,
        "no dead letters to replay\n",
    )
    code, shown = await dlq_cli(settings, "replay", "--all", "--type", "Ping")
    assert code == 0
    assert shown.splitlines()[:2] == [  # the oldest first
        f"js-2: replayed as message {pings[1].message_id}",
        f"js-4: replayed as message {pings[3].message_id}",
    ]
    assert (await client.get("/admin/dlq", headers=AUTH)).json()["total"] == 0


@pytest.mark.parametrize("action", ["show", "replay", "discard"])
async def test_cli_names_dlq_list_for_an_unknown_id(
    admin, settings_for, nats_server, capsys, action
):
    settings = settings_for(nats_url=nats_server.url)
    assert (await dlq_cli(settings, action, "x")) == (1, "")
    assert capsys.readouterr().err == 'no dead letter "x": python -m app dlq list shows the ids\n'


async def test_cli_replay_needs_ids_or_all(admin, settings_for, nats_server, capsys):
    settings = settings_for(nats_url=nats_server.url)
    for argv in (["replay"], ["replay", "js-1", "--all"], ["replay", "js-1", "--type", "Ping"]):
        assert (await dlq_cli(settings, *argv)) == (2, "")
        error = capsys.readouterr().err
        assert error.count("\n") == 1
        assert "python -m app dlq replay --help" in error


async def add_failures(app, failures: list[Failure]) -> None:
    store = services_of(app).bus.dead_letters[0]
    assert isinstance(store, JetStreamDeadLetters)
    for seq, failure in enumerate(failures, start=1):
        envelope = encode(Ping(n=seq), QoS.AT_LEAST_ONCE, "qosmesh.ping")
        await store.add(
            envelope,
            stream="QOSMESH_PING",
            seq=seq,
            consumer="qosmesh__ping",
            failure=failure,
            deliveries=5,
        )


async def test_dead_letters_group_by_type_reason_and_error_type(admin):
    app, client = admin
    boom = Failure("max_deliveries", "ValueError: boom 1", "ValueError")
    other = Failure("max_deliveries", "KeyError: 'x'", "KeyError")
    decode = Failure("undecodable", "not JSON", "DecodeError")
    await add_failures(app, [boom, other, boom, decode, boom])
    body = (await client.get("/admin/dlq/groups", headers=AUTH)).json()
    assert body["scanned"] == 5
    assert body["complete"] is True
    counts = [(g["type"], g["reason"], g["error_type"], g["count"]) for g in body["groups"]]
    assert counts == [
        ("Ping", "max_deliveries", "ValueError", 3),
        ("Ping", "max_deliveries", "KeyError", 1),
        ("Ping", "undecodable", "DecodeError", 1),
    ]
    assert len({g["fingerprint"] for g in body["groups"]}) == 3


async def test_a_record_without_an_error_type_groups_as_unknown(admin):
    """Records kept before dead letters had an error type."""
    app, client = admin
    store = services_of(app).bus.dead_letters[0]
    assert isinstance(store, JetStreamDeadLetters)
    headers = {**encode(Ping(n=1), QoS.AT_LEAST_ONCE, "qosmesh.ping").headers}
    headers |= {"qm-dlq-reason": "max_deliveries", "qm-dlq-error": "ValueError: old"}
    nc = services_of(app).brokers.nc
    await nc.jetstream().publish(store.subject, b"{}", headers=headers)
    (group,) = (await client.get("/admin/dlq/groups", headers=AUTH)).json()["groups"]
    assert group["error_type"] == "unknown"
    listed = (await client.get("/admin/dlq", headers=AUTH)).json()["items"]
    assert [item["error_type"] for item in listed] == ["unknown"]


async def test_a_group_is_replayed_or_discarded_in_bulk_and_the_others_stay(admin):
    app, client = admin
    got: list[int] = []
    boom = Failure("max_deliveries", "ValueError: boom", "ValueError")
    other = Failure("max_deliveries", "KeyError: 'x'", "KeyError")
    await add_failures(app, [boom, other, boom, boom, other])
    groups = (await client.get("/admin/dlq/groups", headers=AUTH)).json()["groups"]
    by_type = {g["error_type"]: g["fingerprint"] for g in groups}
    members = await client.get(f"/admin/dlq/groups/{by_type['ValueError']}", headers=AUTH)
    assert [m["dlq_id"] for m in members.json()["items"]] == ["js-1", "js-3", "js-4"]
    assert {m["fingerprint"] for m in members.json()["items"]} == {by_type["ValueError"]}

    nc = services_of(app).brokers.nc

    async def record(msg) -> None:
        got.append(json.loads(msg.data)["n"])

    sub = await nc.subscribe("qosmesh.ping", cb=record)
    path = f"/admin/dlq/groups/{by_type['ValueError']}/replay"
    first = (await client.post(path, params={"limit": 2}, headers=AUTH)).json()
    assert (first["matched"], first["done"], first["errors"]) == (2, 2, {})
    rest = (await client.post(path, headers=AUTH)).json()
    assert (rest["matched"], rest["done"]) == (1, 1)
    await eventually(lambda: sorted(got) == [1, 3, 4])  # oldest first, each once
    await sub.unsubscribe()

    path = f"/admin/dlq/groups/{by_type['KeyError']}/discard"
    assert (await client.post(path, headers=AUTH)).json()["done"] == 2
    assert (await client.get("/admin/dlq", headers=AUTH)).json()["total"] == 0
    again = (await client.post(path, headers=AUTH)).json()
    assert (again["matched"], again["done"]) == (0, 0)


@pytest.mark.parametrize("fingerprint", ["xyz", "0123456789ABCDEF", "0" * 17])
async def test_a_malformed_group_fingerprint_is_422(admin, fingerprint):
    _, client = admin
    path = f"/admin/dlq/groups/{fingerprint}/replay"
    response = await client.post(path, headers=AUTH)
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "path.fingerprint"
