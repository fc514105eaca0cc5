"""PostgreSQL for the job store: gateways on any node share one database.

Claims take rows with ``FOR UPDATE SKIP LOCKED`` (serve_app/store/sql.py), so
gateways racing for the queue never wait on each other or take a job twice. A
trigger NOTIFYs every commit to the jobs table; a listening connection turns
those into the change counter that long polls watch, as SQLite's
``data_version`` does on one node. Connections come from a pool of
DATABASE_POOL_SIZE, each with a statement timeout, checked before use, so the
store carries on once the database is back after a restart.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlmodel import Session, create_engine

from serve_app.store import migrate

logger = logging.getLogger("ray.serve.whisper.store")

CHANNEL = "whisper_jobs"
# Serializes migrations between gateways starting at once, and the caps'
# count-then-insert between gateways submitting at once.
SCHEMA_LOCK = 7_301_001
QUOTA_LOCK = 7_301_002

_NOTIFY = f"""
CREATE OR REPLACE FUNCTION whisper_jobs_changed() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('{CHANNEL}', '');
    RETURN NULL;
END $$ LANGUAGE plpgsql;
CREATE OR REPLACE TRIGGER whisper_jobs_changed
    AFTER INSERT OR UPDATE OR DELETE ON jobs
    FOR EACH STATEMENT EXECUTE FUNCTION whisper_jobs_changed();
"""


class PostgresDatabase:
    """Sessions from a pool on one PostgreSQL database, and its change counter."""

    keeps_audio = True
    """Any gateway, on any node, reads a job's audio: a copy is kept in the job_audio table."""

    def __init__(self, url: str, *, pool_size: int, statement_timeout_s: float) -> None:
        # SQLAlchemy's name for psycopg 3 is postgresql+psycopg.
        self._url = make_url(url).set(drivername="postgresql+psycopg")
        timeout_ms = int(statement_timeout_s * 1000)
        self._engine = create_engine(
            self._url,
            pool_size=pool_size,
            max_overflow=pool_size,
            pool_pre_ping=True,
            connect_args={"options": f"-c statement_timeout={timeout_ms}"},
        )
        with self._engine.begin() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": SCHEMA_LOCK})
            migrate.upgrade(conn)
            conn.exec_driver_sql(_NOTIFY)
        self._listen_lock = threading.Lock()
        self._listener: Any = None
        self._changes = 0

    @contextmanager
    def session(self, *, write: bool) -> Iterator[Session]:
        with Session(self._engine, expire_on_commit=False) as s:
            yield s
            if write:
                s.commit()

    def serialize_quota(self, s: Session) -> None:
        """Hold the caps' lock until ``s`` commits: two submits count one after the other."""
        s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": QUOTA_LOCK})

    def data_version(self) -> int:
        """How many commits to the jobs table this process has heard of (LISTEN/NOTIFY)."""
        with self._listen_lock:
            try:
                if self._listener is None:
                    self._listener = self._listen()
                    self._changes += 1  # what happened while not listening is unknown
                # A round trip delivers what was heard to _heard, and fails on a
                # connection the server closed (waiting for notifications does not).
                self._listener.execute("SELECT 1")
            except Exception as exc:  # the database went away: listen again next time
                logger.warning("listening for job changes failed (%s)", type(exc).__name__)
                self._close_listener()
                self._changes += 1
            return self._changes

    def _heard(self, _notify: Any) -> None:
        self._changes += 1

    def _listen(self) -> Any:
        import psycopg

        dsn = self._url.set(drivername="postgresql").render_as_string(hide_password=False)
        conn = psycopg.connect(dsn, autocommit=True)
        conn.add_notify_handler(self._heard)
        conn.execute(f"LISTEN {CHANNEL}")
        return conn

    def _close_listener(self) -> None:
        if self._listener is not None:
            with suppress(Exception):
                self._listener.close()
            self._listener = None
