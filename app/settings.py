"""Service settings, read from `APP_*` environment variables and an optional `.env` file.

The variable names are a contract shared with the Helm chart, the scaffold and black-box tests;
README.md lists every one with its default (a test keeps the two in step).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import (
    BaseModel,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DOMAIN = "app.example"
TransportName = Annotated[str, Field(min_length=1, max_length=64)]
"""A transport the registry knows (app/transports/registry.py): `jetstream`, `redis`, `nats`,
`memory`, or one the service registers; an unknown name stops the start, naming the variable."""

_SERVICE_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
MIN_ADMIN_TOKEN = 16


class QosOverride(BaseModel):
    """Per message type override of its QoS level and/or transport."""

    model_config = {"extra": "forbid"}

    qos: Annotated[int, Field(ge=0, le=2)] | None = None
    transport: TransportName | None = None


class Settings(BaseSettings):
    """Every knob of a qosmesh instance; see README.md for the table."""

    model_config = SettingsConfigDict(
        env_prefix="APP_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    service_name: str = "qosmesh"
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8000
    advertise_url: str | None = None
    data_dir: Path = Path("./.data")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_format: Literal["auto", "json", "text"] = "auto"

    nats_url: str | None = None
    nats_user: str | None = None
    nats_password: SecretStr | None = None
    nats_token: SecretStr | None = None
    nats_creds: Path | None = None
    nats_tls_ca: Path | None = None
    nats_tls_cert: Path | None = None
    nats_tls_key: Path | None = None
    nats_connect_timeout: Annotated[float, Field(gt=0)] = 10.0
    nats_reconnect_wait: Annotated[float, Field(gt=0)] = 0.25
    nats_sync: Annotated[str, Field(pattern=r"^(always|[1-9][0-9]*(ms|s|m|h))$")] = "always"
    # Where replies to this service's requests arrive; None: `_INBOX_<service name>`, so a NATS
    # user can be allowed its own inboxes only (app/brokers/permissions.py).
    nats_inbox_prefix: (
        Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")] | None
    ) = None

    redis_url: SecretStr | None = None
    redis_maxlen: Annotated[int, Field(ge=1)] = 100000
    redis_claim_idle: Annotated[float, Field(gt=0)] = 10.0
    redis_block_ms: Annotated[int, Field(ge=1, le=4000)] = 1000

    database_url: SecretStr | None = None
    database_migrate: bool | None = None
    # At least 2: a relay round holds one connection through its publish and marks rows as
    # handed on a second (app/database/outbox.py).
    database_pool_size: Annotated[int, Field(ge=2, le=100)] = 20
    database_connect_timeout: Annotated[float, Field(ge=0)] = 30.0
    outbox_retention: Annotated[float, Field(ge=60)] = 86400.0
    outbox_max_backlog: Annotated[int, Field(ge=1)] = 100000
    outbox_batch: Annotated[int, Field(ge=1, le=10000)] = 256
    inbox_retention: Annotated[float, Field(ge=60)] = 604800.0

    replicas: Annotated[int, Field(ge=1, le=5)] = 1
    discovery_bucket: str = "qosmesh_nodes"
    node_ttl: Annotated[float, Field(ge=1)] = 6.0
    lease_ttl: Annotated[float, Field(ge=1)] = 10.0
    scheduler: Literal["auto", "native", "fallback"] = "auto"
    heartbeat_interval: Annotated[float, Field(gt=0)] | None = None

    qos0_transport: TransportName = "nats"
    qos1_transport: TransportName = "jetstream"
    qos2_transport: TransportName = "jetstream"
    qos_overrides: dict[str, QosOverride] = Field(default_factory=dict)

    publish_attempts: Annotated[int, Field(ge=1)] = 4
    publish_attempt_timeout: Annotated[float, Field(gt=0)] = 1.0
    publish_deadline: Annotated[float, Field(gt=0)] = 5.0
    max_deliver: Annotated[int, Field(ge=1)] = 5
    ack_wait: Annotated[float, Field(gt=0)] = 10.0
    consumer_concurrency: Annotated[int, Field(ge=1)] = 64
    handler_timeout: Annotated[float, Field(gt=0)] = 60.0
    duplicate_window: Annotated[float, Field(ge=1)] = 120.0
    idempotency_ttl: Annotated[float, Field(ge=1)] = 86400.0
    # The dead-letter store's bounds (0: no bound of that kind) and what a full store does:
    # `old` drops the oldest records to make room, `new` refuses the newest (docs/operations.md).
    dlq_max_age: Annotated[float, Field(ge=0)] = 1209600.0
    dlq_max_messages: Annotated[int, Field(ge=0)] = 100000
    dlq_max_bytes: Annotated[int, Field(ge=0)] = 1073741824
    dlq_discard: Literal["old", "new"] = "old"

    admin_token: SecretStr | None = None
    max_body_bytes: Annotated[int, Field(ge=1)] = 65536
    drain_timeout: Annotated[float, Field(ge=0)] = 20.0
    max_message_bytes: Annotated[int, Field(ge=1024)] = 1048576
    domain: str = DEFAULT_DOMAIN

    @field_validator("admin_token", mode="after")
    @classmethod
    def _admin_token(cls, token: SecretStr | None) -> SecretStr | None:
        """Blank means unset (admin off); a short token is refused rather than guessed."""
        if token is None or not token.get_secret_value().strip():
            return None
        if len(token.get_secret_value()) < MIN_ADMIN_TOKEN:
            raise ValueError(f"must be at least {MIN_ADMIN_TOKEN} characters (or empty for off)")
        return token

    @model_validator(mode="after")
    def _check(self) -> Self:
        if not _SERVICE_NAME.match(self.service_name):
            raise ValueError(
                "service_name must be lowercase letters, digits and dashes, starting with a "
                "letter or digit (it names streams and KV keys)"
            )
        if self.heartbeat_interval is not None and self.heartbeat_interval >= self.node_ttl:
            raise ValueError("heartbeat_interval must be shorter than node_ttl")
        return self

    @property
    def public_url(self) -> str:
        """The base URL peers use to reach this instance."""
        return self.advertise_url or f"http://{self.host}:{self.port}"

    @property
    def nats_servers(self) -> list[str]:
        """APP_NATS_URL split into the list nats-py wants (it reads one string as one server)."""
        if not self.nats_url:
            return []
        return [url.strip() for url in self.nats_url.split(",") if url.strip()]

    @property
    def data_path(self) -> Path:
        return self.data_dir.expanduser().resolve()


def describe_validation_error(error: ValidationError) -> str:
    """One line per bad setting, naming the environment variable and what is wrong."""
    lines = []
    for item in error.errors():
        loc = "_".join(str(part) for part in item["loc"] if isinstance(part, str))
        name = f"APP_{loc.upper()}" if loc else "settings"
        value = item.get("input")
        secret = loc in _SECRET_FIELDS or not isinstance(value, str | int | float)
        shown = "" if secret else f" (got {value!r})"
        lines.append(f"configuration error: {name}: {item['msg']}{shown}")
    return "\n".join(lines)


_SECRET_FIELDS = frozenset(
    name for name, field in Settings.model_fields.items() if "SecretStr" in repr(field.annotation)
)
