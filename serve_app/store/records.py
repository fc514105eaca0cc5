"""Job records: the table is the queue (SQLModel; the same models on every backend)."""

from __future__ import annotations

import json
import time
from enum import StrEnum
from typing import Any

from sqlalchemy import UniqueConstraint
from sqlmodel import Field, SQLModel


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


class JobAudio(SQLModel, table=True):
    """A job's spooled audio, where the store keeps it (PostgreSQL: every node reads it);
    deleted in the transaction that ends or removes the job."""

    __tablename__ = "job_audio"

    job_id: str = Field(primary_key=True)
    data: bytes
