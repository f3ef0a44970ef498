"""The order summary the example's singleton job keeps, written only with its lease's token.

Revision ID: example_0002
Revises: example_0001
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "example_0002"
down_revision = "example_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "example_order_stats",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("token", sa.BigInteger, nullable=False),
        sa.Column("computed_by", sa.Text, nullable=False),
        sa.Column("pending", sa.BigInteger, nullable=False),
        sa.Column("confirmed", sa.BigInteger, nullable=False),
        sa.Column("paid", sa.BigInteger, nullable=False),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("example_order_stats")
