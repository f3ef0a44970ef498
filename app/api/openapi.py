"""The OpenAPI document says what the service really answers: every error is problem JSON
(RFC 9457), with the statuses each operation can return (400/413/422 for bodies, 401/404 for
the admin surface, 503 where the broker is involved)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

PROBLEM = "application/problem+json"
PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type", "title", "status"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["field", "message"],
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
}
DESCRIPTIONS = {
    "400": "The body could not be read",
    "401": "Missing or wrong bearer token",
    "404": "Not found (for /admin: admin endpoints are off)",
    "409": "Conflict",
    "413": "The body is larger than APP_MAX_BODY_BYTES",
    "422": "Invalid request; `errors` names each field",
    "503": "A broker is unavailable or did not confirm; retry after `Retry-After` seconds",
}


def _problem(code: str) -> dict[str, Any]:
    return {
        "description": DESCRIPTIONS.get(code, "Error"),
        "content": {PROBLEM: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }


def _document(app: FastAPI) -> dict[str, Any]:
    schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
    schema.setdefault("components", {}).setdefault("schemas", {})["Problem"] = PROBLEM_SCHEMA
    schemas = schema["components"]["schemas"]
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            responses: dict[str, Any] = operation.setdefault("responses", {})
            codes = {code for code in responses if code.startswith(("4", "5"))}
            if "requestBody" in operation:
                codes |= {"400", "413", "422"}
            if operation.get("parameters"):
                codes.add("422")
            if path.startswith("/admin"):
                codes |= {"401", "404"}
            for code in codes:
                responses[code] = _problem(code)
    return schema


def install(app: FastAPI) -> None:
    """Serve the corrected document at /openapi.json (built once, on first request)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _document(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
