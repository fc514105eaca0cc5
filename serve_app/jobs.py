"""Job records: the table is the queue (SQLModel on SQLite, or memory for development)."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, UniqueConstraint, event, func, inspect, or_, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.pool import StaticPool
from sqlmodel import Field, Session, SQLModel, col, create_engine, select


class QueueFull(Exception):
    """MAX_QUEUED_JOBS jobs are queued or running."""


class OwnerQuotaFull(Exception):
    """The owner has MAX_JOBS_PER_KEY jobs, or MAX_QUEUED_AUDIO_S_PER_KEY of audio, in flight."""

    def __init__(self, setting: str, limit: float) -> None:
        super().__init__(setting)
        self.setting = setting
        self.limit = limit


class IdempotencyConflict(Exception):
    """The Idempotency-Key was used before with another file."""


class JobStatus(StrEnum):
    queued = "queued"
    processing = "processing"
    done = "done"
    error = "error"


class Job(SQLModel, table=True):
    __tablename__ = "jobs"
    __table_args__ = (UniqueConstraint("owner", "idempotency_key"),)

    id: str = Field(primary_key=True)
    owner: str = Field(default="", index=True)
    """Fingerprint of the API key that created the job (never the key)."""
    idempotency_key: str | None = None
    audio_sha256: str | None = None
    status: JobStatus = Field(default=JobStatus.queued, index=True)
    created_at: float = Field(default_factory=time.time, index=True)
    deadline_at: float | None = Field(default=None, index=True)
    """After this the job ends in error, whatever it is doing."""
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
    progress: float | None = None
    """While processing: the share of the job's audio decoded (0 to 1)."""
    language: str | None = None
    """Detected (or asked for) once the audio is decoded; in the result too when done."""
    callback_url: str | None = None
    webhook_status: str | None = Field(default=None, index=True)
    """pending (due at webhook_next_at), delivered or failed; None without callback_url."""
    webhook_attempts: int = 0
    webhook_next_at: float | None = None
    webhook_error: str | None = None
    webhook_delivered_at: float | None = None

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


def _unfinished() -> Any:
    """The filter for jobs queued or processing (written once)."""
    return col(Job.status).in_([JobStatus.queued, JobStatus.processing])


class JobStore:
    """All reads and writes of job records; every method is one transaction.

    Methods block (SQLite): call them from a thread in async code.
    """

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
            self._writer = _sqlite_engine(path, immediate=True)
            self._reader = _sqlite_engine(path, immediate=False)
            # Its own connection: PRAGMA data_version counts the commits of others.
            self._watch = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        SQLModel.metadata.create_all(self._writer)
        self._add_missing_columns()

    def _add_missing_columns(self) -> None:
        """Bring a database made by an older version up to this table (new columns only)."""
        table = Job.__table__  # type: ignore[attr-defined]
        with self._writer.begin() as conn:
            present = {c["name"] for c in inspect(conn).get_columns(table.name)}
            for column in table.columns:
                if column.name not in present:
                    kind = column.type.compile(dialect=conn.dialect)
                    conn.execute(
                        text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}')
                    )

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
        owner: str,
        size_bytes: int,
        duration: float | None,
        audio_path: str,
        options: dict[str, Any],
        deadline_s: float,
        max_active: int,
        max_owner_jobs: int | None = None,
        max_owner_audio_s: float | None = None,
        idempotency_key: str | None = None,
        audio_sha256: str | None = None,
        callback_url: str | None = None,
    ) -> tuple[Job, bool]:
        """Insert a queued job; returns (job, created).

        With an ``idempotency_key`` the owner used before, returns that job
        (created False) when the audio is the same, or raises
        IdempotencyConflict. Raises QueueFull when ``max_active`` jobs are
        queued or running, OwnerQuotaFull when the owner has ``max_owner_jobs``
        jobs or ``max_owner_audio_s`` seconds of audio (with this job's) queued or
        running (all counted in the same transaction as the insert).
        """
        now = time.time()
        job = Job(
            id=job_id,
            owner=owner,
            idempotency_key=idempotency_key,
            audio_sha256=audio_sha256,
            created_at=now,
            deadline_at=now + deadline_s,
            size_bytes=size_bytes,
            duration=duration,
            audio_path=audio_path,
            options_json=json.dumps(options),
            callback_url=callback_url,
        )
        try:
            with self._session(write=True) as s:
                previous = self._by_key(s, owner, idempotency_key)
                if previous is not None:
                    return self._replay(previous, audio_sha256)
                if self._count_active(s) >= max_active:
                    raise QueueFull
                self._check_owner(s, job, max_owner_jobs, max_owner_audio_s)
                s.add(job)
        except IntegrityError:
            # Another gateway inserted the same key between our read and write.
            with self._session(write=False) as s:
                previous = self._by_key(s, owner, idempotency_key)
            if previous is None:
                raise
            return self._replay(previous, audio_sha256)
        return job, True

    @staticmethod
    def _replay(previous: Job, audio_sha256: str | None) -> tuple[Job, bool]:
        """The earlier job for a reused Idempotency-Key, if it was for the same file."""
        if previous.audio_sha256 != audio_sha256:
            raise IdempotencyConflict
        return previous, False

    @staticmethod
    def _by_key(s: Session, owner: str, key: str | None) -> Job | None:
        if key is None:
            return None
        query = select(Job).where(Job.owner == owner, Job.idempotency_key == key)
        return s.exec(query).first()

    @staticmethod
    def _check_owner(s: Session, job: Job, max_jobs: int | None, max_audio_s: float | None) -> None:
        if max_jobs is None and max_audio_s is None:
            return
        active = _unfinished()
        query = select(func.count(), func.coalesce(func.sum(Job.duration), 0.0)).where(
            active, Job.owner == job.owner
        )
        jobs, seconds = s.exec(query).one()
        if max_jobs is not None and int(jobs) >= max_jobs:
            raise OwnerQuotaFull("MAX_JOBS_PER_KEY", max_jobs)
        if max_audio_s is not None and float(seconds or 0.0) + (job.duration or 0.0) > max_audio_s:
            raise OwnerQuotaFull("MAX_QUEUED_AUDIO_S_PER_KEY", max_audio_s)

    @staticmethod
    def _count_active(s: Session) -> int:
        active = _unfinished()
        return int(s.exec(select(func.count()).select_from(Job).where(active)).one())

    def queue_position(self, job: Job) -> int:
        """1 for the next queued job to run, 2 for the one after it, and so on."""
        ahead = (col(Job.status) == JobStatus.queued) & (
            (col(Job.created_at) < job.created_at)
            | ((col(Job.created_at) == job.created_at) & (col(Job.id) < job.id))
        )
        with self._session(write=False) as s:
            return 1 + int(s.exec(select(func.count()).select_from(Job).where(ahead)).one())

    def count_by_status(self) -> dict[JobStatus, int]:
        """How many jobs are queued and processing."""
        active = _unfinished()
        query = select(Job.status, func.count()).where(active).group_by(Job.status)
        counts = {JobStatus.queued: 0, JobStatus.processing: 0}
        with self._session(write=False) as s:
            for status, n in s.exec(query):
                counts[JobStatus(status)] = int(n)
        return counts

    def count_active(self) -> int:
        with self._session(write=False) as s:
            return self._count_active(s)

    def list_jobs(
        self,
        *,
        owner: str,
        status: JobStatus | None,
        limit: int,
        before: tuple[float, str] | None = None,
    ) -> list[Job]:
        """The owner's jobs, newest first, older than ``before`` (created_at, id)."""
        query = select(Job).where(Job.owner == owner)
        if status is not None:
            query = query.where(Job.status == status)
        if before is not None:
            created, job_id = before
            query = query.where(
                or_(
                    col(Job.created_at) < created,
                    (col(Job.created_at) == created) & (col(Job.id) < job_id),
                )
            )
        query = query.order_by(col(Job.created_at).desc(), col(Job.id).desc()).limit(limit)
        with self._session(write=False) as s:
            return list(s.exec(query))

    def delete(self, job_id: str) -> Job | None:
        """Remove a job's record (its transcript with it); returns what was removed."""
        with self._session(write=True) as s:
            job = s.get(Job, job_id)
            if job is not None:
                s.delete(job)
            return job

    def purge_finished(self, *, older_than: float) -> int:
        """Delete jobs that ended before ``older_than`` (epoch seconds); returns how many."""
        with self._session(write=True) as s:
            ended = col(Job.status).in_([JobStatus.done, JobStatus.error])
            jobs = list(s.exec(select(Job).where(ended, col(Job.finished_at) < older_than)))
            for job in jobs:
                s.delete(job)
            return len(jobs)

    def expire_overdue(self, *, now: float | None = None) -> list[str | None]:
        """End in error every unfinished job past its deadline; returns their audio paths."""
        now = time.time() if now is None else now
        paths: list[str | None] = []
        with self._session(write=True) as s:
            unfinished = _unfinished()
            for job in s.exec(select(Job).where(unfinished, col(Job.deadline_at) < now)):
                paths.append(job.audio_path)
                job.status = JobStatus.error
                job.error = "the job did not finish before its deadline; submit it again"
                job.error_code = "deadline_exceeded"
                job.finished_at = now
                job.lease_until = None
                job.audio_path = None
                _webhook_due(job, now)
                s.add(job)
        return paths

    def audio_paths(self) -> set[str]:
        """Audio files that jobs still need."""
        with self._session(write=False) as s:
            query = select(Job.audio_path).where(col(Job.audio_path).is_not(None))
            return {str(p) for p in s.exec(query)}

    def data_version(self) -> int:
        """A number that changes when any process commits to the database (cheap)."""
        if self._watch is None:
            return 0  # memory: one process, whose own ends are signalled directly
        with self._watch_lock:
            return int(self._watch.execute("PRAGMA data_version").fetchone()[0])

    def ended_among(self, job_ids: list[str]) -> set[str]:
        """Which of these jobs are done, failed or gone."""
        if not job_ids:
            return set()
        with self._session(write=False) as s:
            live = _unfinished()
            running = set(s.exec(select(Job.id).where(col(Job.id).in_(job_ids), live)))
        return set(job_ids) - running

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
            job.progress = 0.0
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
            if error is None:
                job.progress = 1.0
            _webhook_due(job, job.finished_at)
            s.add(job)
            return job

    def set_progress(
        self, job_id: str, *, attempt: int, progress: float, language: str | None = None
    ) -> bool:
        """Record how far a job this caller holds has come (0 to 1), and its language."""
        with self._session(write=True) as s:
            job = self._held(s, job_id, attempt)
            if job is None:
                return False
            job.progress = round(min(max(progress, 0.0), 1.0), 3)
            job.language = language or job.language
            s.add(job)
            return True

    def claim_webhook(self, *, lease_s: float, job_id: str | None = None) -> Job | None:
        """Take one due webhook delivery (its try count raised by one), or None.

        The delivery is held for ``lease_s``: if this caller dies, it is due again after.
        """
        now = time.time()
        with self._session(write=True) as s:
            query = select(Job).where(
                Job.webhook_status == "pending", col(Job.webhook_next_at) <= now
            )
            if job_id is not None:
                query = query.where(Job.id == job_id)
            job = s.exec(query.order_by(Job.webhook_next_at).limit(1)).first()  # type: ignore[arg-type]
            if job is None:
                return None
            job.webhook_attempts += 1
            job.webhook_next_at = now + lease_s
            s.add(job)
            return job

    def webhook_tried(
        self, job_id: str, *, attempt: int, error: str | None, retry_at: float | None
    ) -> Job | None:
        """Record a delivery try: delivered (no error), due again at ``retry_at``, or failed."""
        with self._session(write=True) as s:
            job = s.get(Job, job_id)
            if job is None or job.webhook_status != "pending" or job.webhook_attempts != attempt:
                return None
            job.webhook_error = error
            if error is None:
                job.webhook_status = "delivered"
                job.webhook_delivered_at = time.time()
                job.webhook_next_at = None
            elif retry_at is None:
                job.webhook_status = "failed"
                job.webhook_next_at = None
            else:
                job.webhook_next_at = retry_at
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
            job.progress = None
            s.add(job)
            return job

    @staticmethod
    def _held(s: Session, job_id: str, attempt: int) -> Job | None:
        job = s.get(Job, job_id)
        if job is None or job.status != JobStatus.processing or job.attempts != attempt:
            return None
        return job


def _webhook_due(job: Job, now: float) -> None:
    """A job with a callback_url that just ended: its webhook is due now."""
    if job.callback_url:
        job.webhook_status = "pending"
        job.webhook_next_at = now
