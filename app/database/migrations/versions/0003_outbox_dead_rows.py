"""Outbox rows the broker refuses as they are (over its max_payload) are set aside as dead
rather than retried for ever.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("qosmesh_outbox", sa.Column("dead_at", sa.DateTime(timezone=True)))


def downgrade() -> None:
    op.drop_column("qosmesh_outbox", "dead_at")
