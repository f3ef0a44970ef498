"""Examples for the AsyncAPI document: a message of each type as it travels, made from its
payload schema (or its own declared example) and put through the model and the encoder."""

from __future__ import annotations

import json
import logging
from typing import Any

from pydantic import ValidationError

from app.messages import Message, QoS, encode

log = logging.getLogger(__name__)

EXAMPLE_ID = "01HV8Z6Q6J0W3S5K9T2C4N7M1B"
"""The message id of every generated example: a fixed ULID, so the document does not change
from one request to the next."""
FORMATS = {
    "date-time": "2024-05-01T12:00:00Z",
    "date": "2024-05-01",
    "time": "12:00:00",
    "duration": "PT1M",
    "uuid": "3fa85f64-5717-4562-b3fc-2c963f66afa6",
    "email": "user@example.com",
    "uri": "https://example.com/",
    "ipv4": "192.0.2.1",
    "ipv6": "2001:db8::1",
}
"""A placeholder per JSON Schema string format pydantic writes."""


def example(message_type: type[Message], qos: QoS, subject: str) -> list[dict[str, Any]]:
    """A message of `message_type` as it travels (AsyncAPI's message `examples`): one made from
    its schema, with a fixed message id and the type's own first example on top, if it declares
    one (`json_schema_extra={"examples": [...]}`), so it is the same on every request. It goes
    through the model and `encode`, so headers and payload are what a publisher sends; one the
    model refuses is left out rather than shown wrong."""
    schema = message_type.model_json_schema()
    declared = schema.get("examples", [None])[0]
    candidate = _sample_object(schema, schema.get("$defs", {}), 0) | {"message_id": EXAMPLE_ID}
    if isinstance(declared, dict):
        candidate |= declared
    try:
        envelope = encode(message_type.model_validate(candidate), qos, subject)
    except ValidationError as exc:
        log.debug("no example for %s: %s", message_type.type_name(), exc)
        return []
    return [
        {
            "name": "declared" if declared else "generated",
            "summary": "the type's own example" if declared else "made from the payload schema",
            "headers": envelope.headers,
            "payload": json.loads(envelope.body),
        }
    ]


def sample(schema: dict[str, Any], defs: dict[str, Any], depth: int = 0) -> Any:
    """A value that `schema` (as pydantic writes it) likely accepts: its own example, const,
    default or first enum value when it has one, else a placeholder of its type."""
    if "$ref" in schema:
        return sample(defs.get(schema["$ref"].rsplit("/", 1)[-1], {}), defs, depth + 1)
    for key in ("examples", "enum"):
        if schema.get(key):
            return schema[key][0]
    for key in ("const", "default"):
        if key in schema:
            return schema[key]
    choices = schema.get("anyOf") or schema.get("oneOf") or schema.get("allOf")
    if choices:
        usable = [c for c in choices if c.get("type") != "null"] or choices
        return sample(usable[0], defs, depth)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), None)
    if depth > 8 or kind is None or kind == "null":  # a recursive model ends here
        return None
    if kind == "object":
        return _sample_object(schema, defs, depth)
    if kind == "array":
        if "prefixItems" in schema:  # a tuple
            return [sample(item, defs, depth + 1) for item in schema["prefixItems"]]
        return [sample(schema.get("items", {}), defs, depth + 1)] * schema.get("minItems", 1)
    if kind in ("integer", "number"):
        return _sample_number(schema, int if kind == "integer" else float)
    if kind == "boolean":
        return True
    text = FORMATS.get(schema.get("format", ""), "string")
    text += "x" * (schema.get("minLength", 0) - len(text))
    return text[: schema.get("maxLength", len(text))]


def _sample_object(schema: dict[str, Any], defs: dict[str, Any], depth: int) -> dict[str, Any]:
    properties = schema.get("properties", {})
    if properties:
        return {name: sample(field, defs, depth + 1) for name, field in properties.items()}
    values = schema.get("additionalProperties")
    return {"key": sample(values, defs, depth + 1)} if isinstance(values, dict) else {}


def _sample_number(schema: dict[str, Any], kind: type[int] | type[float]) -> int | float:
    value: float = 1
    if schema.get("minimum", value) > value:
        value = schema["minimum"]
    if schema.get("exclusiveMinimum", value - 1) >= value:
        value = schema["exclusiveMinimum"] + 1
    if schema.get("maximum", value) < value:
        value = schema["maximum"]
    if schema.get("exclusiveMaximum", value + 1) <= value:
        value = schema["exclusiveMaximum"] - 1
    return kind(value)
