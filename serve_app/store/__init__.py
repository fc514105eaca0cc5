"""The job store: records (records.py), the interface the app uses (interface.py), the
SQL implementation (sql.py) and its backends (sqlite.py, postgres.py), chosen by
DATABASE_URL here."""

from __future__ import annotations

import tempfile
from pathlib import Path

from sqlalchemy.engine import make_url

from serve_app.store.interface import JobStore, WebhookOutbox
from serve_app.store.records import IdempotencyConflict, Job, JobStatus, OwnerQuotaFull, QueueFull

__all__ = [
    "IdempotencyConflict",
    "Job",
    "JobStatus",
    "JobStore",
    "OwnerQuotaFull",
    "QueueFull",
    "WebhookOutbox",
    "backend_of",
    "open_store",
    "shareable",
]

BACKENDS = ("sqlite", "postgresql")


def backend_of(url: str) -> str:
    """The backend ``url`` names, if this version has it; else ValueError saying what it
    has (never quoting the URL: it may hold a password)."""
    try:
        backend = make_url(url).get_backend_name()
    except Exception:
        raise ValueError(
            "this is not a database URL: use sqlite:///PATH or postgresql://USER@HOST/DB"
        ) from None
    if backend not in BACKENDS:
        raise ValueError(
            f"a {backend} database is not supported: use sqlite:///PATH or "
            "postgresql://USER@HOST/DB (or leave DATABASE_URL unset for DATA_DIR/whisper-jobs.db)"
        )
    return backend


def _sqlite_path(url: str) -> Path | None:
    database = make_url(url).database
    return Path(database) if database else None


def open_store(url: str, *, pool_size: int = 5, statement_timeout_s: float = 30) -> JobStore:
    """The job store at ``url``: ``sqlite:///PATH``, ``sqlite://`` (memory), or
    ``postgresql://...`` (a pool of ``pool_size``, statements cut at the timeout)."""
    from serve_app.store.sql import SqlJobStore

    if backend_of(url) == "postgresql":
        from serve_app.store.postgres import PostgresDatabase

        pg = PostgresDatabase(url, pool_size=pool_size, statement_timeout_s=statement_timeout_s)
        return SqlJobStore(pg)
    from serve_app.store.sqlite import SQLiteDatabase

    return SqlJobStore(SQLiteDatabase(_sqlite_path(url)))


def shareable(url: str) -> str:
    """A URL that every gateway replica (a process of its own) opens as the same store.

    A relative path is pinned where the operator started the server, not where a
    replica runs. Memory (the seed's USE_SQLITE=false) must not outlive this start,
    yet every replica must see the same jobs: a fresh file per start gives both.
    """
    if backend_of(url) != "sqlite":
        return url  # a server: every node reaches the same one
    path = _sqlite_path(url)
    if path is None:
        path = Path(tempfile.mkdtemp(prefix="whisper-jobs-memory-")) / "jobs.db"
    return f"sqlite:///{path.resolve()}"
