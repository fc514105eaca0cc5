"""Taking a job in (upload, probe, record, dispatch) and waiting for it to end.

Shared by the job API (serve_app/routes.py) and the OpenAI-compatible API
(serve_app/openai_compat.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable

from fastapi import HTTPException, Request, status

from deployments.protocol import TranscribeOptions
from serve_app.ends import EndWatcher
from serve_app.options import parse_options, stored
from serve_app.runner import JobRunner
from serve_app.settings import Settings
from serve_app.store import (
    IdempotencyConflict,
    Job,
    JobStatus,
    JobStore,
    OwnerQuotaFull,
    QueueFull,
)
from serve_app.uploads import check_declared_length, probe_duration, receive_upload, too_long
from serve_app.webhooks import check_callback_url

logger = logging.getLogger("ray.serve.whisper.intake")

RETRY_AFTER_S = 10
# A waiting request re-reads the job at least this often, whatever it hears.
WAIT_RECHECK_S = 2.0


def too_many(message: str, retry_after: int = RETRY_AFTER_S) -> HTTPException:
    """429 with Retry-After: a limit the client may try again under later."""
    return HTTPException(
        status.HTTP_429_TOO_MANY_REQUESTS,
        f"{message}; retry after {retry_after} s",
        headers={"Retry-After": str(retry_after)},
    )


def queue_full(settings: Settings) -> HTTPException:
    return too_many(
        f"the server has {settings.max_queued_jobs} jobs queued or running (MAX_QUEUED_JOBS)"
    )


def owner_quota_full(exc: OwnerQuotaFull) -> HTTPException:
    what = {
        "MAX_JOBS_PER_KEY": f"{exc.limit:g} jobs",
        "MAX_QUEUED_AUDIO_S_PER_KEY": f"{exc.limit:g} s of audio",
    }[exc.setting]
    return too_many(f"this key has {what} queued or running at most ({exc.setting})")


async def accept_job(
    request: Request,
    *,
    owner: str,
    settings: Settings,
    store: JobStore,
    runner: JobRunner,
    idempotency_key: str | None = None,
    options_from: Callable[[dict[str, str]], TranscribeOptions] = parse_options,
    takes_callback: bool = False,
) -> tuple[Job, bool]:
    """Stream the upload to disk, check it, record a queued job and start it.

    Returns (job, created): with an Idempotency-Key used before, the earlier
    job and False. Leaves no file behind when it refuses. ``takes_callback``:
    the form may carry a ``callback_url`` (checked against WEBHOOK_ALLOWED_HOSTS).
    """
    if runner.uploads_in_progress(owner) >= settings.max_uploads_per_key:
        raise too_many(
            f"this key has {settings.max_uploads_per_key} uploads in progress (MAX_UPLOADS_PER_KEY)"
        )
    with runner.receiving(owner):
        limit = settings.max_file_bytes
        check_declared_length(request.headers.get("content-length"), limit)
        if idempotency_key is None and await asyncio.to_thread(store.count_active) >= (
            settings.max_queued_jobs
        ):
            raise queue_full(settings)
        job_id = str(uuid.uuid4())
        settings.upload_dir.mkdir(parents=True, exist_ok=True)
        dest = settings.upload_dir / f"{job_id}.audio"
        upload = await receive_upload(
            request.headers.get("content-type"),
            request.stream(),
            dest=dest,
            limit=limit,
            idle_s=settings.upload_idle_timeout_s,
            total_s=settings.upload_timeout_s,
        )
        try:
            fields = dict(upload.fields)
            callback_url = fields.pop("callback_url", None) if takes_callback else None
            options = options_from(fields)
            if callback_url:
                callback_url = check_callback_url(callback_url, settings)
            duration = await asyncio.to_thread(probe_duration, dest)
            if duration is not None and duration > settings.max_audio_seconds:
                raise too_long(duration, settings.max_audio_seconds)
            job, created = await asyncio.to_thread(
                store.create,
                job_id=job_id,
                owner=owner,
                size_bytes=upload.size,
                duration=duration,
                audio_path=str(dest),
                options=stored(options),
                deadline_s=settings.job_deadline(duration),
                max_active=settings.max_queued_jobs,
                max_owner_jobs=settings.max_jobs_per_key,
                max_owner_audio_s=settings.max_queued_audio_s_per_key,
                idempotency_key=idempotency_key,
                audio_sha256=upload.sha256,
                callback_url=callback_url or None,
            )
        except QueueFull:
            dest.unlink(missing_ok=True)
            raise queue_full(settings) from None
        except OwnerQuotaFull as exc:
            dest.unlink(missing_ok=True)
            raise owner_quota_full(exc) from None
        except IdempotencyConflict:
            dest.unlink(missing_ok=True)
            raise HTTPException(
                status.HTTP_409_CONFLICT,
                "this Idempotency-Key was used with another file: use a new key for new audio",
            ) from None
        except BaseException:
            dest.unlink(missing_ok=True)
            raise
        if not created:
            dest.unlink(missing_ok=True)
            return job, False
        runner.submit(job_id)
        logger.info(
            "job %s queued: %d bytes, %s s of audio",
            job_id,
            upload.size,
            "?" if duration is None else f"{duration:.1f}",
        )
        return job, True


async def own_job(store: JobStore, job_id: str, owner: str) -> Job:
    """The caller's job; another key's job is as unknown as a missing one."""
    job = await asyncio.to_thread(store.get, job_id)
    if job is None or job.owner != owner:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no job {job_id!r}")
    return job


async def wait_for_end(
    store: JobStore, ends: EndWatcher, job_id: str, owner: str, wait: float
) -> Job:
    """The job once it is done or failed, or as it is after ``wait`` seconds."""
    job = await own_job(store, job_id, owner)
    deadline = time.monotonic() + wait
    while job.status not in (JobStatus.done, JobStatus.error):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        await ends.wait(job_id, min(left, WAIT_RECHECK_S))
        job = await own_job(store, job_id, owner)
    return job
