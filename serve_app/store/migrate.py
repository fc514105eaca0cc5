"""Bring a job store's database to the newest schema (Alembic; serve_app/store/migrations/).

Every store runs this when it opens, inside a transaction its backend serializes
(SQLite's write lock, PostgreSQL's advisory lock): gateways starting together
migrate once. A change to the tables is a new file in migrations/versions/
(`alembic revision` with script_location set to serve_app/store/migrations).
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection

MIGRATIONS = Path(__file__).parent / "migrations"


def upgrade(connection: Connection) -> None:
    """Run every migration ``connection``'s database lacks, in its transaction."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")
