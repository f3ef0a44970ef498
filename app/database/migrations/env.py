"""Alembic's environment: migrations run on the connection `app.database.migrate` hands in,
inside its transaction and under its advisory lock."""

from __future__ import annotations

from alembic import context

from app.database.tables import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata)
with context.begin_transaction():
    context.run_migrations()
