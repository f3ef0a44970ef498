"""`GET /asyncapi.json`: an AsyncAPI 3.0 document of the messages this service sends and
receives, generated from the types its domain declared (`bus.publishes`) and the handlers it
registered: channels (subjects), operations, messages with their pydantic payload schemas, an
example and the qm-* headers, and each channel's QoS and transport (docs/qos.md).

`GET /asyncapi` shows the same document as a page for people (app/api/asyncapi_page.py), with
examples made from the payload schemas (app/api/asyncapi_examples.py)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import HTMLResponse
from pydantic.json_schema import models_json_schema

from app import __version__
from app.api.asyncapi_examples import example
from app.api.asyncapi_page import QOS_TEXT, page
from app.api.console import page_headers
from app.api.deps import ServicesDep
from app.bus import Bus
from app.messages import (
    ENVELOPE_VERSION,
    H_CORRELATION,
    H_ID,
    H_QOS,
    H_SCHEMA,
    H_TYPE,
    H_VERSION,
    Message,
)
from app.settings import Settings

router = APIRouter(include_in_schema=False)

HEADERS: dict[str, Any] = {
    "type": "object",
    "description": "The envelope's NATS headers (Redis: fields of the stream entry)",
    "required": [H_VERSION, H_ID, H_TYPE],
    "properties": {
        H_VERSION: {"type": "string", "const": ENVELOPE_VERSION, "description": "envelope version"},
        H_ID: {"type": "string", "description": "message id: the dedupe id end to end"},
        H_TYPE: {"type": "string", "description": "message type name"},
        H_QOS: {"type": "string", "enum": ["0", "2"], "description": "QoS, when not 1"},
        H_SCHEMA: {"type": "string", "description": "payload schema version, when not 1"},
        H_CORRELATION: {"type": "string", "description": "correlation id, when not the id"},
        "traceparent": {"type": "string", "description": "W3C trace context, when traced"},
    },
}


@router.get("/asyncapi.json")
async def asyncapi(services: ServicesDep) -> dict[str, Any]:
    """The document, also while a broker is away (it describes, it does not publish)."""
    return document(services.bus, services.settings)


@router.get("/asyncapi")
async def asyncapi_page(services: ServicesDep) -> HTMLResponse:
    return HTMLResponse(page(document(services.bus, services.settings)), headers=page_headers())


def document(bus: Bus, settings: Settings) -> dict[str, Any]:
    """The service's AsyncAPI 3.0 document."""
    published, handled = bus.message_types
    types = list(dict.fromkeys([*published, *(t for t, _ in handled)]))
    refs, schemas = models_json_schema(
        [(t, "serialization") for t in types], ref_template="#/components/schemas/{model}"
    )
    components: dict[str, Any] = {
        "schemas": {**schemas.get("$defs", {}), "QosMeshHeaders": HEADERS},
        "messages": {},
    }
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for message_type in types:
        name = message_type.type_name()
        qos, transport = bus.route(message_type)
        components["messages"][name] = {
            "name": name,
            "title": name,
            "summary": (message_type.__doc__ or "").strip().split("\n")[0] or name,
            "contentType": "application/json",
            "headers": {"$ref": "#/components/schemas/QosMeshHeaders"},
            "payload": refs[(message_type, "serialization")],
            "examples": example(message_type, qos, bus.subject(message_type)),
            "x-qos": int(qos),
            "x-schema-version": message_type.schema_version,
        }
        channels[name] = {
            "address": bus.subject(message_type),
            "title": name,
            "description": f"QoS {int(qos)} ({QOS_TEXT[int(qos)]}) on {transport.name}",
            "messages": {name: {"$ref": f"#/components/messages/{name}"}},
            "x-qos": int(qos),
            "x-transport": transport.name,
        }
    for message_type in published:
        _operation(operations, "send", message_type)
    for message_type, subscription in handled:
        _operation(operations, "receive", message_type)
        receive = operations[f"receive{message_type.type_name()}"]
        receive["x-consumer"] = subscription.name  # the durable consumer (or stream group)
        receive["x-competing"] = subscription.group is not None  # else every instance
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": settings.service_name,
            "version": __version__,
            "description": (
                f"Messages of {settings.service_name}, a qosmesh service: QoS 0 on NATS core, "
                "QoS 1 and 2 on JetStream or Redis Streams (x-qos, x-transport)."
            ),
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": components,
    }


def _operation(operations: dict[str, Any], action: str, message_type: type[Message]) -> None:
    name = message_type.type_name()
    operation: dict[str, Any] = {
        "action": action,
        "channel": {"$ref": f"#/channels/{name}"},
        "messages": [{"$ref": f"#/channels/{name}/messages/{name}"}],
    }
    operations[f"{action}{name}"] = operation
