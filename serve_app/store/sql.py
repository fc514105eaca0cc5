"""The job store in SQL (SQLModel): queue, leases and fencing, the webhook outbox.

Backend-neutral: a ``Database`` (serve_app/store/sqlite.py, postgres.py) gives it
sessions, the change counter that long polls watch, and the caps' lock. The methods' contract is in
serve_app/store/interface.py.
"""

from __future__ import annotations

import json
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import delete, func, or_
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from serve_app.store.records import (
    IdempotencyConflict,
    Job,
    JobAudio,
    JobStatus,
    OwnerQuotaFull,
    QueueFull,
)


class Database(Protocol):
    """What a backend gives the SQL store."""

    def session(self, *, write: bool) -> AbstractContextManager[Session]:
        """A session whose transaction commits on leaving (``write``) or only reads."""
        ...

    def data_version(self) -> int:
        """A number that changes when any process commits."""
        ...

    def serialize_quota(self, s: Session) -> None:
        """Make the caps' count and the insert in ``s`` one step among concurrent submits."""
        ...

    keeps_audio: bool
    """A copy of each job's spooled audio is kept in the job_audio table (gateways on other
    nodes read it), beside the local file."""


def _unfinished() -> Any:
    """The filter for jobs queued or processing (written once)."""
    return col(Job.status).in_([JobStatus.queued, JobStatus.processing])


class SqlJobStore:
    """serve_app/store/interface.py's JobStore over a SQL database."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self.outbox = SqlWebhookOutbox(db)

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
        # Read, and sent to the database, before the caps' lock is taken: other
        # submits wait for this one's count and insert, not for its upload's bytes.
        audio = Path(audio_path).read_bytes() if self._db.keeps_audio else None
        try:
            with self._db.session(write=True) as s:
                previous = self._by_key(s, owner, idempotency_key)
                if previous is not None:
                    return self._replay(previous, audio_sha256)
                if audio is not None:
                    s.add(JobAudio(job_id=job_id, data=audio))
                    s.flush()
                self._db.serialize_quota(s)
                if self._count_active(s) >= max_active:
                    raise QueueFull
                self._check_owner(s, job, max_owner_jobs, max_owner_audio_s)
                s.add(job)
        except IntegrityError:
            # Another gateway inserted the same key between our read and write.
            with self._db.session(write=False) as s:
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
        ahead = (col(Job.status) == JobStatus.queued) & (
            (col(Job.created_at) < job.created_at)
            | ((col(Job.created_at) == job.created_at) & (col(Job.id) < job.id))
        )
        with self._db.session(write=False) as s:
            return 1 + int(s.exec(select(func.count()).select_from(Job).where(ahead)).one())

    def count_by_status(self) -> dict[JobStatus, int]:
        active = _unfinished()
        query = select(Job.status, func.count()).where(active).group_by(Job.status)
        counts = {JobStatus.queued: 0, JobStatus.processing: 0}
        with self._db.session(write=False) as s:
            for status, n in s.exec(query):
                counts[JobStatus(status)] = int(n)
        return counts

    def count_active(self) -> int:
        with self._db.session(write=False) as s:
            return self._count_active(s)

    def list_jobs(
        self,
        *,
        owner: str,
        status: JobStatus | None,
        limit: int,
        before: tuple[float, str] | None = None,
    ) -> list[Job]:
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
        with self._db.session(write=False) as s:
            return list(s.exec(query))

    def delete(self, job_id: str) -> Job | None:
        with self._db.session(write=True) as s:
            job = s.get(Job, job_id)
            if job is not None:
                s.delete(job)
                _drop_audio(s, job_id)
            return job

    def audio(self, job_id: str) -> bytes | None:
        with self._db.session(write=False) as s:
            kept = s.get(JobAudio, job_id)
            return None if kept is None else bytes(kept.data)

    def purge_finished(self, *, older_than: float) -> int:
        with self._db.session(write=True) as s:
            ended = col(Job.status).in_([JobStatus.done, JobStatus.error])
            jobs = list(s.exec(select(Job).where(ended, col(Job.finished_at) < older_than)))
            for job in jobs:
                s.delete(job)
            return len(jobs)

    def expire_overdue(self, *, now: float | None = None) -> list[str | None]:
        now = time.time() if now is None else now
        paths: list[str | None] = []
        with self._db.session(write=True) as s:
            unfinished = _unfinished()
            overdue = select(Job).where(unfinished, col(Job.deadline_at) < now)
            for job in s.exec(overdue.with_for_update(skip_locked=True)):
                paths.append(job.audio_path)
                job.status = JobStatus.error
                job.error = "the job did not finish before its deadline; submit it again"
                job.error_code = "deadline_exceeded"
                job.finished_at = now
                job.lease_until = None
                job.audio_path = None
                _drop_audio(s, job.id)
                _webhook_due(job, now)
                s.add(job)
        return paths

    def audio_paths(self) -> set[str]:
        with self._db.session(write=False) as s:
            query = select(Job.audio_path).where(col(Job.audio_path).is_not(None))
            return {str(p) for p in s.exec(query)}

    def data_version(self) -> int:
        return self._db.data_version()

    def ended_among(self, job_ids: list[str]) -> set[str]:
        if not job_ids:
            return set()
        with self._db.session(write=False) as s:
            live = _unfinished()
            running = set(s.exec(select(Job.id).where(col(Job.id).in_(job_ids), live)))
        return set(job_ids) - running

    def get(self, job_id: str) -> Job | None:
        with self._db.session(write=False) as s:
            return s.get(Job, job_id)

    def claim(self, *, lease_s: float, job_id: str | None = None) -> Job | None:
        now = time.time()
        with self._db.session(write=True) as s:
            query = select(Job).where(
                or_(
                    col(Job.status) == JobStatus.queued,
                    (col(Job.status) == JobStatus.processing) & (col(Job.lease_until) < now),
                )
            )
            if job_id is not None:
                query = query.where(Job.id == job_id)
            # SKIP LOCKED: a row another gateway is claiming is passed over, not waited for
            # (PostgreSQL; SQLite's writers take turns anyway).
            oldest = query.order_by(Job.created_at).limit(1)  # type: ignore[arg-type]
            query = oldest.with_for_update(skip_locked=True)
            job = s.exec(query).first()
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
        with self._db.session(write=True) as s:
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
        with self._db.session(write=True) as s:
            job = self._held(s, job_id, attempt)
            if job is None:
                return None
            job.status = JobStatus.error if error is not None else JobStatus.done
            job.result_json = None if result is None else json.dumps(result)
            job.error, job.error_code = error, error_code
            job.finished_at = time.time()
            job.lease_until = None
            job.audio_path = None  # the caller deletes the file once this commits
            _drop_audio(s, job_id)
            if error is None:
                job.progress = 1.0
            _webhook_due(job, job.finished_at)
            s.add(job)
            return job

    def set_progress(
        self, job_id: str, *, attempt: int, progress: float, language: str | None = None
    ) -> bool:
        with self._db.session(write=True) as s:
            job = self._held(s, job_id, attempt)
            if job is None:
                return False
            job.progress = round(min(max(progress, 0.0), 1.0), 3)
            job.language = language or job.language
            s.add(job)
            return True

    def release(self, job_id: str, *, attempt: int) -> Job | None:
        with self._db.session(write=True) as s:
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
        # Locked from this read to the commit: a claim by another gateway cannot slip
        # between the fencing check and the write.
        job = s.get(Job, job_id, with_for_update=True)
        if job is None or job.status != JobStatus.processing or job.attempts != attempt:
            return None
        return job


class SqlWebhookOutbox:
    """serve_app/store/interface.py's WebhookOutbox: deliveries are columns of the job row."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def claim(self, *, lease_s: float, job_id: str | None = None) -> Job | None:
        now = time.time()
        with self._db.session(write=True) as s:
            query = select(Job).where(
                Job.webhook_status == "pending", col(Job.webhook_next_at) <= now
            )
            if job_id is not None:
                query = query.where(Job.id == job_id)
            due = query.order_by(Job.webhook_next_at).limit(1)  # type: ignore[arg-type]
            query = due.with_for_update(skip_locked=True)
            job = s.exec(query).first()
            if job is None:
                return None
            job.webhook_attempts += 1
            job.webhook_next_at = now + lease_s
            s.add(job)
            return job

    def tried(
        self, job_id: str, *, attempt: int, error: str | None, retry_at: float | None
    ) -> Job | None:
        with self._db.session(write=True) as s:
            job = s.get(Job, job_id, with_for_update=True)
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


def _drop_audio(s: Session, job_id: str) -> None:
    s.execute(delete(JobAudio).where(col(JobAudio.job_id) == job_id))


def _webhook_due(job: Job, now: float) -> None:
    """A job with a callback_url that just ended: its webhook is due now."""
    if job.callback_url:
        job.webhook_status = "pending"
        job.webhook_next_at = now
