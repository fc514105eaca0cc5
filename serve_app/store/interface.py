"""The job store as the app sees it: every method is one transaction, and blocks
(call it from a thread in async code). ``open_store`` (serve_app/store/__init__.py)
picks the backend from DATABASE_URL; nothing outside this package names one."""

from __future__ import annotations

from typing import Any, Protocol

from serve_app.store.records import Job, JobStatus


class WebhookOutbox(Protocol):
    """Webhook deliveries due from ended jobs (at least once, any gateway)."""

    def claim(self, *, lease_s: float, job_id: str | None = None) -> Job | None:
        """Take one due delivery (its try count raised by one), or None; with ``job_id``,
        only that job's. It is held for ``lease_s``: if the caller dies, it is due again."""
        ...

    def tried(
        self, job_id: str, *, attempt: int, error: str | None, retry_at: float | None
    ) -> Job | None:
        """Record a try: delivered (no error), due again at ``retry_at``, or failed;
        None if that try is no longer the job's latest."""
        ...


class JobStore(Protocol):
    """All reads and writes of job records; the table is the queue.

    Jobs are claimed with a lease and fenced by their attempt number: a caller
    that lost a job (its lease ran out and another took it) has its writes refused.
    """

    @property
    def outbox(self) -> WebhookOutbox:
        """The webhook deliveries of this store's jobs."""
        ...

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

        A store whose gateways may run on several nodes also keeps the bytes of the
        file at ``audio_path``: ``audio`` gives them to a gateway on another node
        until the job ends.
        """
        ...

    def audio(self, job_id: str) -> bytes | None:
        """A job's audio, if the store keeps it (see ``create``); None once the job ended
        or where the store keeps none (the file at the job's ``audio_path`` is the audio)."""
        ...

    def get(self, job_id: str) -> Job | None: ...

    def list_jobs(
        self,
        *,
        owner: str,
        status: JobStatus | None,
        limit: int,
        before: tuple[float, str] | None = None,
    ) -> list[Job]:
        """The owner's jobs, newest first, older than ``before`` (created_at, id)."""
        ...

    def queue_position(self, job: Job) -> int:
        """1 for the next queued job to run, 2 for the one after it, and so on."""
        ...

    def count_active(self) -> int:
        """Jobs queued or processing."""
        ...

    def count_by_status(self) -> dict[JobStatus, int]:
        """How many jobs are queued and processing."""
        ...

    def claim(self, *, lease_s: float, job_id: str | None = None) -> Job | None:
        """Take one job to run: a queued one, or one whose lease ran out.

        Returns the job with ``attempts`` raised by one, or None. With
        ``job_id``, only that job is taken.
        """
        ...

    def renew(self, job_id: str, *, attempt: int, lease_s: float) -> bool:
        """Extend the lease of a job this caller still holds."""
        ...

    def set_progress(
        self, job_id: str, *, attempt: int, progress: float, language: str | None = None
    ) -> bool:
        """Record how far a job this caller holds has come (0 to 1), and its language."""
        ...

    def release(self, job_id: str, *, attempt: int) -> Job | None:
        """Put a job this caller holds back in the queue for another try."""
        ...

    def finish(
        self,
        job_id: str,
        *,
        attempt: int,
        result: dict[str, Any] | None = None,
        error: str | None = None,
        error_code: str | None = None,
    ) -> Job | None:
        """Record the end of a job this caller holds (its webhook, if any, is then due);
        None if it lost the lease. The caller deletes the audio once this returns."""
        ...

    def delete(self, job_id: str) -> Job | None:
        """Remove a job's record (its transcript with it); returns what was removed."""
        ...

    def purge_finished(self, *, older_than: float) -> int:
        """Delete jobs that ended before ``older_than`` (epoch seconds); returns how many."""
        ...

    def expire_overdue(self, *, now: float | None = None) -> list[str | None]:
        """End in error every unfinished job past its deadline; returns their audio paths."""
        ...

    def audio_paths(self) -> set[str]:
        """Audio files that jobs still need."""
        ...

    def data_version(self) -> int:
        """A number that changes when any process commits (cheap: long polls watch it)."""
        ...

    def ended_among(self, job_ids: list[str]) -> set[str]:
        """Which of these jobs are done, failed or gone."""
        ...
