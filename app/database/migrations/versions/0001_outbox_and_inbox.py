"""The transactional outbox and inbox.

Revision ID: 0001
Revises:
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "qosmesh_outbox",
        sa.Column("id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
        sa.Column("message_id", sa.String(64), nullable=False),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("qos", sa.SmallInteger, nullable=False),
        sa.Column("transport", sa.String(64), nullable=False),
        sa.Column("ordering_key", sa.Text, nullable=True),
        sa.Column("headers", JSONB, nullable=False),
        sa.Column("body", sa.LargeBinary, nullable=False),
        # The clock at the insert, not the transaction's start (now()): a row's latency to the
        # broker counts from when it was written.
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.func.clock_timestamp(),
        ),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("last_error", sa.Text, nullable=True),
    )
    op.create_index(
        "qosmesh_outbox_unsent",
        "qosmesh_outbox",
        ["id"],
        postgresql_where=sa.text("sent_at IS NULL"),
    )
    op.create_index(
        "qosmesh_outbox_unsent_by_key",
        "qosmesh_outbox",
        ["ordering_key", "id"],
        postgresql_where=sa.text("sent_at IS NULL"),
    )
    op.create_index(
        "qosmesh_outbox_sent",
        "qosmesh_outbox",
        ["sent_at"],
        postgresql_where=sa.text("sent_at IS NOT NULL"),
    )
    # One round trip for the write: the per-key lock (held to the commit), the row, and the
    # notification the relays wake on (delivered at the commit).
    op.execute(
        """
        CREATE FUNCTION qosmesh_outbox_add(
            p_message_id text, p_subject text, p_qos smallint, p_transport text,
            p_ordering_key text, p_headers jsonb, p_body bytea
        ) RETURNS void LANGUAGE plpgsql AS $$
        BEGIN
            IF p_ordering_key IS NOT NULL THEN
                -- the lock class 0x716D6F62, "qmob": the per-key write locks
                PERFORM pg_advisory_xact_lock(1902997346, hashtext(p_ordering_key));
            END IF;
            INSERT INTO qosmesh_outbox
                (message_id, subject, qos, transport, ordering_key, headers, body)
            VALUES
                (p_message_id, p_subject, p_qos, p_transport, p_ordering_key, p_headers, p_body);
            PERFORM pg_notify('qosmesh_outbox', '');
        END
        $$
        """
    )
    op.create_table(
        "qosmesh_inbox",
        sa.Column("consumer", sa.Text, primary_key=True),
        sa.Column("message_id", sa.String(64), primary_key=True),
        sa.Column(
            "handled_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
    )
    op.create_index("qosmesh_inbox_handled_at", "qosmesh_inbox", ["handled_at"])


def downgrade() -> None:
    op.execute("DROP FUNCTION qosmesh_outbox_add")
    op.drop_table("qosmesh_inbox")
    op.drop_table("qosmesh_outbox")
