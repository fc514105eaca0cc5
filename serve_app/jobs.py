"""Job records: the table is the queue (SQLModel on SQLite, or memory for development)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, event, or_
from sqlalchemy.pool import StaticPool
from sqlmodel import Field, Session, SQLModel, col, create_engine, select


class JobStatus(StrEnum):
    queued = "queued"
    processing = "processing"
    done = "done"
    error = "error"


class Job(SQLModel, table=True):
    __tablename__ = "jobs"

    id: str = Field(primary_key=True)
    status: JobStatus = Field(default=JobStatus.queued, index=True)
    created_at: float = Field(default_factory=time.time, index=True)
    started_at: float | None = None
    finished_at: float | None = None
    size_bytes: int = 0
    duration: float | None = None
    audio_path: str | None = None
    options_json: str = "{}"
    attempts: int = 0
    lease_until: float | None = Field(default=None, index=True)
    result_json: str | None = None
    error: str | None = None
    error_code: str | None = None

    @property
    def options(self) -> dict[str, Any]:
        return dict(json.loads(self.options_json))

    @property
    def result(self) -> dict[str, Any] | None:
        return None if self.result_json is None else dict(json.loads(self.result_json))


def _sqlite_engine(path: Path, *, immediate: bool) -> Engine:
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


class JobStore:
    """All reads and writes of job records; every method is one transaction.

    Methods block (SQLite): call them from a thread in async code.
    """

    def __init__(self, path: Path | None) -> None:
        self._lock: threading.Lock | None = None
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
            self._writer = _sqlite_engine(path, immediate=True)
            self._reader = _sqlite_engine(path, immediate=False)
        SQLModel.metadata.create_all(self._writer)

    @contextmanager
    def _session(self, *, write: bool) -> Iterator[Session]:
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

    def create(
        self,
        *,
        job_id: str,
        size_bytes: int,
        duration: float | None,
        audio_path: str,
        options: dict[str, Any],
    ) -> Job:
        job = Job(
            id=job_id,
            size_bytes=size_bytes,
            duration=duration,
            audio_path=audio_path,
            options_json=json.dumps(options),
        )
        with self._session(write=True) as s:
            s.add(job)
        return job

    def get(self, job_id: str) -> Job | None:
        with self._session(write=False) as s:
            return s.get(Job, job_id)

    def claim(self, *, lease_s: float, job_id: str | None = None) -> Job | None:
        """Take one job to run: a queued one, or one whose lease ran out.

        Returns the job with ``attempts`` raised by one, or None. With
        ``job_id``, only that job is taken.
        """
        now = time.time()
        with self._session(write=True) as s:
            query = select(Job).where(
                or_(
                    col(Job.status) == JobStatus.queued,
                    (col(Job.status) == JobStatus.processing) & (col(Job.lease_until) < now),
                )
            )
            if job_id is not None:
                query = query.where(Job.id == job_id)
            job = s.exec(query.order_by(Job.created_at).limit(1)).first()  # type: ignore[arg-type]
            if job is None:
                return None
            job.status = JobStatus.processing
            job.attempts += 1
            job.started_at = job.started_at or now
            job.lease_until = now + lease_s
            s.add(job)
            return job

    def renew(self, job_id: str, *, attempt: int, lease_s: float) -> bool:
        """Extend the lease of a job this caller still holds."""
        with self._session(write=True) as s:
            job = self._held(s, job_id, attempt)
            if job is None:
                return False
            job.lease_until = time.time() + lease_s
            s.add(job)
            return True

    def finish(
        self,
        job_id: str,
        *,
        attempt: int,
        result: dict[str, Any] | None = None,
        error: str | None = None,
        error_code: str | None = None,
    ) -> Job | None:
        """Record the end of a job this caller holds; None if it lost the lease."""
        with self._session(write=True) as s:
            job = self._held(s, job_id, attempt)
            if job is None:
                return None
            job.status = JobStatus.error if error is not None else JobStatus.done
            job.result_json = None if result is None else json.dumps(result)
            job.error, job.error_code = error, error_code
            job.finished_at = time.time()
            job.lease_until = None
            job.audio_path = None  # the caller deletes the file once this commits
            s.add(job)
            return job

    def release(self, job_id: str, *, attempt: int) -> Job | None:
        """Put a job this caller holds back in the queue for another try."""
        with self._session(write=True) as s:
            job = self._held(s, job_id, attempt)
            if job is None:
                return None
            job.status = JobStatus.queued
            job.lease_until = None
            s.add(job)
            return job

    @staticmethod
    def _held(s: Session, job_id: str, attempt: int) -> Job | None:
        job = s.get(Job, job_id)
        if job is None or job.status != JobStatus.processing or job.attempts != attempt:
            return None
        return job
