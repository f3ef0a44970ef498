"""The tables qosmesh keeps in PostgreSQL: the transactional outbox and inbox. Migrations
(app/database/migrations) create them; this metadata is what the code queries."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData()

outbox = Table(
    "qosmesh_outbox",
    metadata,
    Column("id", BigInteger, Identity(always=True), primary_key=True),
    Column("message_id", String(64), nullable=False),
    Column("subject", Text, nullable=False),
    Column("qos", SmallInteger, nullable=False),
    Column("transport", String(64), nullable=False),
    Column("ordering_key", Text, nullable=True),
    Column("headers", JSONB, nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column(
        "created_at", DateTime(timezone=True), nullable=False, server_default=func.clock_timestamp()
    ),
    Column("sent_at", DateTime(timezone=True), nullable=True),  # when the broker had acked it
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("last_error", Text, nullable=True),
    # Set aside: the broker or the code refused the message for good. Never retried by the
    # relay; an operator retries or discards it (docs/outbox.md).
    Column("dead_at", DateTime(timezone=True), nullable=True),
    # Not tried again before then: the row's own backoff after a failed publish.
    Column("not_before", DateTime(timezone=True), nullable=True),
)
Index(
    "qosmesh_outbox_pending",
    outbox.c.id,
    postgresql_where=outbox.c.sent_at.is_(None) & outbox.c.dead_at.is_(None),
)
Index(
    "qosmesh_outbox_unsent_by_message",
    outbox.c.message_id,
    postgresql_where=outbox.c.sent_at.is_(None),
)
Index(
    "qosmesh_outbox_unsent_by_key",
    outbox.c.ordering_key,
    outbox.c.id,
    postgresql_where=outbox.c.sent_at.is_(None),
)
Index("qosmesh_outbox_sent", outbox.c.sent_at, postgresql_where=outbox.c.sent_at.isnot(None))

handed = Table(
    "qosmesh_outbox_handed",
    metadata,
    # An outbox row a relay is about to publish: committed before the publish, so a row listed
    # here may be at the broker whatever its `sent_at` says (docs/outbox.md, "A cancel").
    Column("id", BigInteger, primary_key=True),
    Column(
        "handed_at", DateTime(timezone=True), nullable=False, server_default=func.clock_timestamp()
    ),
)

inbox = Table(
    "qosmesh_inbox",
    metadata,
    Column("consumer", Text, primary_key=True),
    Column("message_id", String(64), primary_key=True),
    Column("handled_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)
Index("qosmesh_inbox_handled_at", inbox.c.handled_at)

http_keys = Table(
    "qosmesh_http_keys",
    metadata,
    Column("scope", Text, primary_key=True),
    Column("key", Text, primary_key=True),
    Column("fingerprint", Text, nullable=False),
    Column("status", Integer, nullable=False),
    Column("response", JSONB, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)
Index("qosmesh_http_keys_created_at", http_keys.c.created_at)
