"""Outbox rows are retried each on its own schedule, and a row is marked as handed to the broker
before it is published.

- `not_before`: a row whose publish failed is not tried again before then (its own backoff);
  the relay's other rows go on.
- `qosmesh_outbox_handed`: the rows a relay is about to publish, committed (in a transaction of
  its own) before the publish. A row listed there may have reached the broker even when its
  `sent_at` never committed (a crash, a lost PubAck): a cancel then asks the broker rather than
  trusting the row.
- The pending rows' index leaves dead rows out, and unsent rows are found by message id for a
  cancel.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("qosmesh_outbox", sa.Column("not_before", sa.DateTime(timezone=True)))
    op.create_table(
        "qosmesh_outbox_handed",
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column(
            "handed_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.func.clock_timestamp(),
        ),
    )
    op.create_index(
        "qosmesh_outbox_pending",
        "qosmesh_outbox",
        ["id"],
        postgresql_where=sa.text("sent_at IS NULL AND dead_at IS NULL"),
    )
    op.drop_index("qosmesh_outbox_unsent", "qosmesh_outbox")
    op.create_index(
        "qosmesh_outbox_unsent_by_message",
        "qosmesh_outbox",
        ["message_id"],
        postgresql_where=sa.text("sent_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("qosmesh_outbox_unsent_by_message", "qosmesh_outbox")
    op.create_index(
        "qosmesh_outbox_unsent",
        "qosmesh_outbox",
        ["id"],
        postgresql_where=sa.text("sent_at IS NULL"),
    )
    op.drop_index("qosmesh_outbox_pending", "qosmesh_outbox")
    op.drop_table("qosmesh_outbox_handed")
    op.drop_column("qosmesh_outbox", "not_before")
