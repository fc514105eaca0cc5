"""Alembic's environment: migrations run on the connection serve_app/store/migrate.py gives."""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

import serve_app.store.records  # noqa: F401 - the tables, for autogenerate

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=SQLModel.metadata,
    render_as_batch=True,  # SQLite alters a table by copying it
)
with context.begin_transaction():
    context.run_migrations()
