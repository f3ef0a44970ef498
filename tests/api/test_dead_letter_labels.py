"""Dead letters that say what they are: a `label` (the message type, else the subject it came
on) and an `explanation` a person reads, even for bytes that were never a qosmesh message; and
a replayed message found again by its message id when it fails again.

This module is also the domain of the instance its HTTP tests run: one message type whose
handler always fails."""

import logging
from datetime import datetime

import httpx
import pytest
from fastapi import APIRouter

from app.brokers import Brokers
from app.bus import Bus
from app.instance.services import services_of
from app.messages import H_SCHEMA, H_TYPE, H_VERSION, DecodeError, Envelope, Message
from app.messages import decode_message as decode
from app.qos.dead_letters import NO_RESULT, DeadLetters, explain
from app.settings import Settings
from app.testing import eventually, running_app
from tests.transports.conftest import FAST_BUS, Ping, running_bus

TOKEN = "labels-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
GARBAGE = b"not json"


class Poisoned(Message):
    n: int


router = APIRouter()


async def setup(bus: Bus, brokers: Brokers, settings: Settings) -> None:
    async def fail(message: Poisoned) -> None:
        raise RuntimeError(f"poisoned {message.n}")

    bus.publishes(Poisoned)
    bus.subscribe(Poisoned, fail)


async def _settled(store: DeadLetters, n: int) -> bool:
    return (await store.list(10, None)).total == n


async def test_a_raw_message_on_jetstream_is_named_by_its_subject(
    settings_for, nats_server, caplog
):
    """No headers, a body that is not JSON: labelled by its subject, explained, and logged
    by its subject."""
    caplog.set_level(logging.WARNING, logger="app.transports.jetstream.dead_letters")
    settings = settings_for(nats_url=nats_server.url, **FAST_BUS)
    async with running_bus(settings, lambda bus: bus.subscribe(Ping, _ignore)) as running:
        await running.brokers.js.publish("svc.ping", GARBAGE)
        store = DeadLetters(running.bus.dead_letters)
        await eventually(lambda: _settled(store, 1), timeout=10)
        (item,) = (await store.list(10, None)).items
        groups = (await store.groups()).groups
    assert (item.type, item.label, item.message_id) == ("", "svc.ping", "")
    assert item.error == "no qm-version header: not a qosmesh envelope"
    assert item.explanation == "not a qosmesh message: no envelope version header"
    assert [(g.label, g.explanation) for g in groups] == [("svc.ping", item.explanation)]
    assert f"a message on svc.ping (no message id) dead-lettered as {item.dlq_id}: " in caplog.text


async def test_a_raw_entry_on_redis_is_named_by_its_subject(
    settings_for, nats_server, redis_server, caplog
):
    caplog.set_level(logging.WARNING, logger="app.transports.redis.dead_letters")
    settings = settings_for(
        nats_url=nats_server.url,
        redis_url=redis_server.url,
        qos1_transport="redis",
        redis_block_ms=200,
        **FAST_BUS,
    )
    async with running_bus(settings, lambda bus: bus.subscribe(Ping, _ignore)) as running:
        client = running.brokers.redis
        assert client is not None
        await client.xadd("svc.ping", {"$body": GARBAGE})
        await client.xadd("svc.ping", {H_VERSION: "1", H_TYPE: "Ping", "$body": GARBAGE})
        store = DeadLetters(running.bus.dead_letters)
        await eventually(lambda: _settled(store, 2), timeout=10)
        items = (await store.list(10, None)).items
    assert sorted((i.label, i.explanation) for i in items) == [
        ("Ping", "not a qosmesh message: the body is not JSON"),
        ("svc.ping", "not a qosmesh message: no envelope version header"),
    ]
    (raw,) = [i.dlq_id for i in items if i.label == "svc.ping"]
    assert f"a message on svc.ping (no message id) dead-lettered as {raw}: " in caplog.text


async def _ignore(message: Ping) -> None:
    return None


@pytest.fixture
async def poisoned(settings_for, nats_server):
    """An instance whose only handler always fails, on its first and only delivery."""
    settings = settings_for(
        nats_url=nats_server.url, admin_token=TOKEN, domain=__name__, max_deliver=1
    )
    async with running_app(settings) as (app, url), httpx.AsyncClient(base_url=url) as client:
        yield app, client


async def _of(client: httpx.AsyncClient, message_id: str) -> list[dict[str, object]]:
    answer = await client.get("/admin/dlq", params={"message_id": message_id}, headers=AUTH)
    assert answer.status_code == 200
    items: list[dict[str, object]] = answer.json()["items"]
    return items


async def test_a_replayed_message_that_fails_again_is_found_by_its_message_id(poisoned):
    app, client = poisoned
    bus = services_of(app).bus
    message, other = Poisoned(n=1), Poisoned(n=2)
    await bus.publish(message)
    await bus.publish(other)
    await eventually(lambda: _count(client, message.message_id, 1), timeout=10)
    (first,) = await _of(client, message.message_id)
    assert first["label"] == "Poisoned"
    assert first["explanation"] == (
        "the handler failed on its last delivery (1 delivery): RuntimeError: poisoned 1"
    )

    replayed = await client.post(f"/admin/dlq/{first['dlq_id']}/replay", headers=AUTH)
    assert replayed.status_code == 202
    assert replayed.json() == {
        "dlq_id": first["dlq_id"],
        "message_id": message.message_id,
        "label": "Poisoned",
        "status": "replayed",
    }
    await eventually(lambda: _count(client, message.message_id, 1), timeout=10)
    (again,) = await _of(client, message.message_id)
    assert again["dlq_id"] != first["dlq_id"]
    assert _at(again) > _at(first)
    assert [i["message_id"] for i in await _of(client, other.message_id)] == [other.message_id]


def _at(item: dict[str, object]) -> datetime:
    return datetime.fromisoformat(str(item["dead_at"]))


async def _count(client: httpx.AsyncClient, message_id: str, n: int) -> bool:
    return len(await _of(client, message_id)) == n


async def test_a_raw_message_reads_by_its_subject_over_http_and_replays_under_it(poisoned):
    app, client = poisoned
    await services_of(app).brokers.js.publish("qosmesh.poisoned", GARBAGE)
    await eventually(lambda: _total(client, 1), timeout=10)
    (item,) = (await client.get("/admin/dlq", headers=AUTH)).json()["items"]
    assert (item["type"], item["label"]) == ("", "qosmesh.poisoned")
    shown = (await client.get(f"/admin/dlq/{item['dlq_id']}", headers=AUTH)).json()
    assert shown["explanation"] == "not a qosmesh message: no envelope version header"
    (group,) = (await client.get("/admin/dlq/groups", headers=AUTH)).json()["groups"]
    assert (group["label"], group["type"]) == ("qosmesh.poisoned", "")
    replayed = (await client.post(f"/admin/dlq/{item['dlq_id']}/replay", headers=AUTH)).json()
    assert (replayed["message_id"], replayed["label"]) == ("", "qosmesh.poisoned")


async def _total(client: httpx.AsyncClient, n: int) -> bool:
    return bool((await client.get("/admin/dlq", headers=AUTH)).json()["total"] == n)


async def test_the_message_id_filter_answers_in_one_page_and_needs_an_id(poisoned):
    _, client = poisoned
    params = {"message_id": "M", "cursor": "js-1"}
    page = await client.get("/admin/dlq", params=params, headers=AUTH)
    assert page.status_code == 200
    assert page.json()["next_cursor"] is None
    assert (await client.get("/admin/dlq?message_id=", headers=AUTH)).status_code == 422


def _decode_error(headers: dict[str, str], body: bytes = b'{"n": 1}') -> tuple[str, str, str]:
    try:
        decode(Envelope(headers=headers, body=body), {"Ping": Ping})
    except DecodeError as exc:
        return exc.reason, str(exc), type(exc).__name__
    raise AssertionError("decoded")


ENVELOPE = {H_VERSION: "1", H_TYPE: "Ping"}


@pytest.mark.parametrize(
    ("failure", "explanation"),
    [
        (_decode_error({}), "not a qosmesh message: no envelope version header"),
        (_decode_error({H_VERSION: "1"}), "not a qosmesh message: no message type header"),
        (_decode_error(ENVELOPE, GARBAGE), "not a qosmesh message: the body is not JSON"),
        (
            _decode_error({**ENVELOPE, H_SCHEMA: "3"}),
            "a newer schema version than this service reads "
            "(Ping schema 3: this service reads up to 1)",
        ),
        (
            _decode_error({**ENVELOPE, H_VERSION: "2"}),
            "a version this service does not read "
            "(envelope version '2': this service reads version 1)",
        ),
        (
            _decode_error({**ENVELOPE, H_TYPE: "Pong"}),
            "an unknown message type (no handler for type 'Pong')",
        ),
        (
            _decode_error(ENVELOPE, b'{"n": []}'),
            "a body its message type does not accept "
            "(invalid Ping body: n: Input should be a valid integer)",
        ),
        (("oversized", "body of 2048 bytes", "DecodeError"), "too large: 2048 bytes"),
        (("terminated", "terminated by a consumer", "Terminated"), "terminated by a consumer"),
        (
            (NO_RESULT.reason, NO_RESULT.error, NO_RESULT.error_type),
            "delivered 5 times and no handler ended on it (a consumer died or timed out)",
        ),
        (
            ("max_deliveries", "ValueError: boom", "ValueError"),
            "the handler failed on its last delivery (5 deliveries): ValueError: boom",
        ),
        (
            ("unknown_version", "envelope version None", "unknown"),
            "not a qosmesh message: no envelope version header",
        ),
    ],
)
def test_every_reason_is_explained_in_a_sentence(
    failure: tuple[str, str, str], explanation: str
) -> None:
    """From the errors the decoder raises, and from records kept before those texts."""
    reason, error, error_type = failure
    assert explain(reason, error, error_type, 5) == explanation
