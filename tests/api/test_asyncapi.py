"""`GET /asyncapi.json` is an AsyncAPI 3.0 document that validates against the official JSON
Schema (`@asyncapi/specs` 6.11.1, `schemas/3.0.0-without-$id.json`, vendored here), and says
what the service sends and receives, on which subjects, at which QoS and on which transport,
with an example of each message that its schema and its model accept."""

from __future__ import annotations

import json
from datetime import date
from enum import StrEnum
from pathlib import Path
from typing import Literal
from uuid import UUID

import httpx
import jsonschema
import pytest
from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.api.asyncapi_examples import EXAMPLE_ID, example
from app.messages import Message, QoS
from app.testing import running_app

SCHEMA = json.loads((Path(__file__).parent / "schemas/asyncapi-3.0.0-without-id.json").read_text())


@pytest.fixture
async def document(settings_for, nats_server, tmp_path, monkeypatch):
    monkeypatch.setenv("FLAKY_FLAG", str(tmp_path / "flag"))
    monkeypatch.setenv("FLAKY_EFFECTS", str(tmp_path / "effects"))
    settings = settings_for(
        nats_url=nats_server.url, domain="tests.console.flaky_domain", service_name="billing"
    )
    async with running_app(settings) as (_, url), httpx.AsyncClient(base_url=url) as client:
        response = await client.get("/asyncapi.json")
        assert response.status_code == 200
        return response.json()


def test_the_document_validates_against_the_asyncapi_3_schema(document):
    jsonschema.validate(document, SCHEMA)
    assert document["asyncapi"] == "3.0.0"
    assert document["info"]["title"] == "billing"


def test_it_names_the_subjects_operations_qos_transport_and_payload(document):
    channel = document["channels"]["FlakyJob"]
    assert channel["address"] == "billing.flaky_job"
    assert (channel["x-qos"], channel["x-transport"]) == (1, "jetstream")
    operations = document["operations"]
    assert operations["sendFlakyJob"]["action"] == "send"
    receive = operations["receiveFlakyJob"]
    assert receive["action"] == "receive"
    assert receive["channel"] == {"$ref": "#/channels/FlakyJob"}
    assert receive["x-competing"] is True
    assert receive["x-consumer"] == "billing__flaky_job"
    message = document["components"]["messages"]["FlakyJob"]
    assert message["headers"] == {"$ref": "#/components/schemas/QosMeshHeaders"}
    headers = document["components"]["schemas"]["QosMeshHeaders"]
    assert {"qm-id", "qm-type", "qm-version", "qm-qos"} <= set(headers["properties"])
    payload = document["components"]["schemas"]["FlakyJob"]
    assert {"message_id", "note"} <= set(payload["properties"])
    assert payload["properties"]["note"]["type"] == "string"


def test_a_document_that_breaks_the_schema_is_refused(document):
    """The vendored schema is not a rubber stamp."""
    broken = {**document, "operations": {"x": {"action": "publish", "channel": {}}}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, SCHEMA)


def test_every_message_has_an_example_its_schemas_accept(document):
    for name, message in document["components"]["messages"].items():
        (shown,) = message["examples"]
        refs = {"components": document["components"]}
        jsonschema.validate(shown["payload"], {**refs, "$ref": message["payload"]["$ref"]})
        jsonschema.validate(shown["headers"], {**refs, **message["headers"]})
        assert shown["headers"]["qm-type"] == name
        assert shown["payload"]["message_id"] == shown["headers"]["qm-id"] == EXAMPLE_ID


class Colour(StrEnum):
    RED = "red"
    BLUE = "blue"


class Line(BaseModel):
    sku: str = Field(min_length=3, max_length=8)
    quantity: int = Field(ge=5, le=10)
    price: float = Field(gt=0.5)


class Node(BaseModel):
    name: str
    children: list[Node] = []


class Everything(Message):
    """Most of what a pydantic payload holds."""

    qos = QoS.EXACTLY_ONCE
    colour: Colour
    kind: Literal["a", "b"]
    lines: list[Line] = Field(min_length=2)
    counts: dict[str, int]
    day: date
    ref: UUID
    maybe: int | None
    tree: Node
    pair: tuple[int, str]
    debt: float = Field(lt=0)


class Declared(Message):
    model_config = ConfigDict(json_schema_extra={"examples": [{"note": "a note of its own"}]})
    note: str


class Picky(Message):
    code: str

    @field_validator("code")
    @classmethod
    def _never(cls, value: str) -> str:
        raise ValueError("no code is good enough")


def test_an_example_is_made_from_a_schema_of_nested_models_enums_and_constraints():
    (made,) = example(Everything, QoS.EXACTLY_ONCE, "shop.everything")
    assert made["headers"]["qm-qos"] == "2"
    payload = made["payload"]
    assert Everything.model_validate(payload).model_dump(mode="json") == payload
    assert (payload["colour"], payload["kind"], len(payload["lines"])) == ("red", "a", 2)
    assert payload["lines"][0]["quantity"] == 5
    assert payload["debt"] < 0
    assert payload["pair"] == [1, "string"]
    assert example(Everything, QoS.EXACTLY_ONCE, "shop.everything") == [made]  # the same again


def test_a_declared_example_wins_and_one_the_model_refuses_is_left_out():
    (declared,) = example(Declared, QoS.AT_LEAST_ONCE, "shop.declared")
    assert declared["name"] == "declared"
    assert declared["payload"]["note"] == "a note of its own"
    assert example(Picky, QoS.AT_LEAST_ONCE, "shop.picky") == []
