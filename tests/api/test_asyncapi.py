"""`GET /asyncapi.json` is an AsyncAPI 3.0 document that validates against the official JSON
Schema (`@asyncapi/specs` 6.11.1, `schemas/3.0.0-without-$id.json`, vendored here), and says
what the service sends and receives, on which subjects, at which QoS and on which transport."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import jsonschema
import pytest

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
