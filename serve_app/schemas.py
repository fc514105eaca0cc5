"""What the API returns: the seed's keys, plus a few more."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Self

from pydantic import BaseModel, Field

from deployments.protocol import Segment
from serve_app.store import Job, JobStatus


class WebhookPublic(BaseModel):
    """Delivery of the job's end to its callback_url."""

    url: str
    status: str | None = Field(
        default=None,
        description="pending (until the job ends, and between tries), delivered, failed",
    )
    attempts: int = 0
    last_error: str | None = Field(default=None, description="what the last failed try got")
    delivered_at: datetime | None = None

    @classmethod
    def from_job(cls, job: Job) -> Self | None:
        if not job.callback_url:
            return None
        return cls(
            url=job.callback_url,
            status=job.webhook_status or "pending",
            attempts=job.webhook_attempts,
            last_error=job.webhook_error,
            delivered_at=_utc(job.webhook_delivered_at),
        )


class JobAccepted(BaseModel):
    job_id: str
    status: JobStatus = JobStatus.queued


class JobSummary(BaseModel):
    """A job without its transcript (listings)."""

    job_id: str
    status: JobStatus
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration: float | None = Field(default=None, description="audio length in seconds")
    attempts: int = 0
    progress: float | None = Field(
        default=None, description="share of the audio decoded: 0 to 1 while processing, 1 when done"
    )
    language: str | None = None
    error: str | None = None
    error_code: str | None = None

    @classmethod
    def from_job(cls, job: Job) -> Self:
        result = job.result or {}
        return cls(
            job_id=job.id,
            status=job.status,
            created_at=datetime.fromtimestamp(job.created_at, UTC),
            started_at=_utc(job.started_at),
            finished_at=_utc(job.finished_at),
            duration=job.duration,
            attempts=job.attempts,
            progress=job.progress,
            language=result.get("language") or job.language,
            error=job.error,
            error_code=job.error_code,
        )


class JobPublic(JobSummary):
    """A job; with ``done``, its transcript."""

    queue_position: int | None = Field(
        default=None, description="while queued: 1 when this job runs next"
    )
    text: str | None = None
    segments: list[Segment] | None = None
    webhook: WebhookPublic | None = Field(default=None, description="with callback_url")

    @classmethod
    def from_job(cls, job: Job) -> Self:
        result = job.result or {}
        return cls.model_validate(
            {
                **JobSummary.from_job(job).model_dump(),
                "text": result.get("text"),
                "segments": result.get("segments"),
                "webhook": WebhookPublic.from_job(job),
            }
        )


class JobList(BaseModel):
    jobs: list[JobSummary]
    next_cursor: str | None = Field(
        default=None, description="pass as cursor= for the next page; absent on the last"
    )


class Health(BaseModel):
    status: str = "ok"
    model: str


class ErrorBody(BaseModel):
    detail: str = Field(description="what was wrong and what to do")


def _utc(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)
