"""Orders left unpaid are cancelled: a count of the payments accepted for each order, so a
cancellation never overtakes a payment already answered 202.

Revision ID: example_0003
Revises: example_0002
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "example_0003"
down_revision = "example_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "example_orders",
        sa.Column("payments_accepted", sa.Integer, nullable=False, server_default=sa.text("0")),
    )


def downgrade() -> None:
    op.drop_column("example_orders", "payments_accepted")
