"""SQLite for the job store: one file in WAL mode shared by the gateways of one node,
or memory (USE_SQLITE=false, development only)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.pool import StaticPool
from sqlmodel import Session, create_engine

from serve_app.store import migrate


def _file_engine(path: Path, *, immediate: bool) -> Engine:
    engine = create_engine(
        f"sqlite:///{path}", connect_args={"check_same_thread": False, "timeout": 30}
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # We send BEGIN ourselves (below), so the driver must not.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # Writers take the write lock up front: two gateway replicas that both
        # read then write would otherwise deadlock (SQLITE_BUSY on upgrade).
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


class SQLiteDatabase:
    """Sessions on one SQLite file (``path``), or on one shared in-memory connection."""

    keeps_audio = False
    """One node: a job's spooled file stays on its disk."""

    def __init__(self, path: Path | None) -> None:
        self._lock: threading.Lock | None = None
        self._watch: sqlite3.Connection | None = None
        self._watch_lock = threading.Lock()
        if path is None:
            memory = create_engine(
                "sqlite://",
                connect_args={"check_same_thread": False},
                poolclass=StaticPool,
            )
            self._writer = self._reader = memory
            self._lock = threading.Lock()  # one shared connection
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = _file_engine(path, immediate=True)
            self._reader = _file_engine(path, immediate=False)
            # Its own connection: PRAGMA data_version counts the commits of others.
            self._watch = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        with self._writer.begin() as conn:  # BEGIN IMMEDIATE: one gateway migrates at a time
            migrate.upgrade(conn)

    @contextmanager
    def session(self, *, write: bool) -> Iterator[Session]:
        if self._lock is not None:
            self._lock.acquire()
        try:
            with Session(self._writer if write else self._reader, expire_on_commit=False) as s:
                yield s
                if write:
                    s.commit()
        finally:
            if self._lock is not None:
                self._lock.release()

    def serialize_quota(self, s: Session) -> None:
        """Nothing to do: writers hold SQLite's write lock from BEGIN IMMEDIATE."""

    def data_version(self) -> int:
        if self._watch is None:
            return 0  # memory: one process, whose own ends are signalled directly
        with self._watch_lock:
            return int(self._watch.execute("PRAGMA data_version").fetchone()[0])
