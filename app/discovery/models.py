"""What one instance says about itself in the discovery bucket, and how that value is read."""

from __future__ import annotations

import json
import re
import secrets
import socket
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

SCHEMA_VERSION: Literal[1] = 1

_NOT_IN_TOKEN = re.compile(r"[^A-Za-z0-9_-]+")


class NodeInfo(BaseModel):
    """One live instance: the JSON value stored under `<service>.<node_id>`."""

    model_config = ConfigDict(populate_by_name=True, frozen=True)

    node_id: str = Field(pattern=r"^[A-Za-z0-9_-]+$")
    service: str
    version: str
    address: str
    started_at: datetime
    last_seen: datetime
    metadata: dict[str, str] = Field(default_factory=dict)
    schema_version: Literal[1] = Field(default=SCHEMA_VERSION, alias="schema")

    @property
    def key(self) -> str:
        return f"{self.service}.{self.node_id}"

    def same_apart_from_last_seen(self, other: NodeInfo) -> bool:
        return self.model_copy(update={"last_seen": other.last_seen}) == other

    def to_json(self) -> bytes:
        return self.model_dump_json(by_alias=True).encode()


def now() -> datetime:
    return datetime.now(UTC)


def new_node_id() -> str:
    """Unique per process start, readable in logs, and a single KV key token (no dots)."""
    host = _NOT_IN_TOKEN.sub("-", socket.gethostname()).strip("-")[:32] or "node"
    return f"{host}-{secrets.token_hex(4)}"


class BadNodeValue(ValueError):
    """A bucket value that is not a NodeInfo this code can read."""


def decode_node(key: str, value: bytes | None) -> NodeInfo:
    """The NodeInfo stored under `key`, or BadNodeValue saying why it cannot be used."""
    try:
        raw: Any = json.loads(value or b"")
    except ValueError as exc:
        raise BadNodeValue(f"not JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise BadNodeValue("not a JSON object")
    if raw.get("schema") != SCHEMA_VERSION:
        raise BadNodeValue(f"unknown schema version {raw.get('schema')!r}")
    try:
        node = NodeInfo.model_validate(raw)
    except ValidationError as exc:
        raise BadNodeValue(f"invalid NodeInfo: {exc.error_count()} errors") from exc
    if node.key != key:
        raise BadNodeValue(f"stored under {key!r} but describes {node.key!r}")
    return node
