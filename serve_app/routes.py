"""HTTP routes: health, submit a job, read a job."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, Response, status
from fastapi.responses import JSONResponse

from serve_app.auth import OwnerDep, require_api_key
from serve_app.deps import EndsDep, PacerDep, RunnerDep, SettingsDep, StoreDep
from serve_app.formats import MEDIA_TYPES, render
from serve_app.intake import accept_job, own_job, too_many, wait_for_end
from serve_app.options import OPENAPI_FIELDS
from serve_app.schemas import ErrorBody, Health, JobAccepted, JobList, JobPublic, JobSummary
from serve_app.store import Job, JobStatus
from serve_app.uploads import multipart_openapi

logger = logging.getLogger("ray.serve.whisper.routes")

MAX_WAIT_S = 60
ENDED = (JobStatus.done, JobStatus.error)

health_router = APIRouter()
jobs_router = APIRouter(
    prefix="/transcribe",
    tags=["jobs"],
    dependencies=[Depends(require_api_key)],
    responses={401: {"model": ErrorBody, "description": "missing or invalid bearer token"}},
)

_MULTIPART_BODY = multipart_openapi(
    {
        **OPENAPI_FIELDS,
        "callback_url": {
            "type": "string",
            "format": "uri",
            "description": "POST the job's final JSON here when it ends, signed "
            "(X-Whisper-Signature); the host must be in WEBHOOK_ALLOWED_HOSTS",
        },
    }
)


@health_router.get("/health", response_model=Health)
async def health(settings: SettingsDep) -> Health:
    """Liveness; needs no token."""
    return Health(model=settings.whisper_model)


@jobs_router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobAccepted,
    openapi_extra=_MULTIPART_BODY,
    responses={
        200: {"model": JobAccepted, "description": "Idempotency-Key replay: the earlier job"},
        400: {"model": ErrorBody},
        409: {"model": ErrorBody, "description": "Idempotency-Key used with another file"},
        413: {"model": ErrorBody, "description": "over MAX_FILE_SIZE_MB or MAX_AUDIO_SECONDS"},
        415: {"model": ErrorBody, "description": "not multipart, or not audio"},
        429: {"model": ErrorBody, "description": "MAX_QUEUED_JOBS reached; see Retry-After"},
    },
)
async def submit_job(
    request: Request,
    owner: OwnerDep,
    settings: SettingsDep,
    store: StoreDep,
    runner: RunnerDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            max_length=255,
            description="the same key and file return the same job; another file is 409",
        ),
    ] = None,
) -> JSONResponse:
    """Store the audio and queue a job; answers before any transcription."""
    job, created = await accept_job(
        request,
        owner=owner,
        settings=settings,
        store=store,
        runner=runner,
        idempotency_key=idempotency_key,
        takes_callback=True,
    )
    body = JobAccepted(job_id=job.id, status=job.status).model_dump(mode="json")
    if not created:
        return JSONResponse(
            body,
            status_code=status.HTTP_200_OK,
            headers={"Location": f"/transcribe/{job.id}", "Idempotent-Replayed": "true"},
        )
    return JSONResponse(
        body, status_code=status.HTTP_202_ACCEPTED, headers={"Location": f"/transcribe/{job.id}"}
    )


@jobs_router.get(
    "",
    response_model=JobList,
    response_model_exclude_none=True,
    responses={400: {"model": ErrorBody, "description": "a cursor this server did not make"}},
)
async def list_jobs(
    owner: OwnerDep,
    store: StoreDep,
    status_: Annotated[JobStatus | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> JobList:
    """The caller's own jobs, newest first, a page at a time."""
    before = _read_cursor(cursor) if cursor else None
    jobs = await asyncio.to_thread(
        store.list_jobs, owner=owner, status=status_, limit=limit + 1, before=before
    )
    page = jobs[:limit]
    next_cursor = _make_cursor(page[-1]) if len(jobs) > limit else None
    return JobList(jobs=[JobSummary.from_job(j) for j in page], next_cursor=next_cursor)


def _make_cursor(job: Job) -> str:
    raw = json.dumps([job.created_at, job.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _read_cursor(cursor: str) -> tuple[float, str]:
    try:
        created, job_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return float(created), str(job_id)
    except (ValueError, TypeError) as exc:
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST,
            "invalid cursor: pass the next_cursor of the previous page unchanged",
        ) from exc


@jobs_router.get(
    "/{job_id}",
    response_model=JobPublic,
    response_model_exclude_none=True,
    responses={
        200: {
            "description": "the job as JSON, or its transcript as txt, srt or vtt",
            "content": {
                "text/plain": {"schema": {"type": "string"}},
                "application/x-subrip": {"schema": {"type": "string"}},
                "text/vtt": {"schema": {"type": "string"}},
            },
        },
        404: {"model": ErrorBody},
        409: {"model": ErrorBody, "description": "format= asked of a job that is not done"},
        429: {"model": ErrorBody, "description": "over STATUS_READS_PER_S_PER_KEY"},
    },
)
async def get_job(
    job_id: str,
    response: Response,
    owner: OwnerDep,
    store: StoreDep,
    ends: EndsDep,
    pacer: PacerDep,
    settings: SettingsDep,
    wait: Annotated[
        float,
        Query(
            ge=0,
            le=MAX_WAIT_S,
            description="seconds to wait for the job to end before answering (long poll)",
        ),
    ] = 0,
    format: Annotated[
        Literal["json", "txt", "srt", "vtt"],
        Query(description="json: the job; txt, srt, vtt: its transcript alone"),
    ] = "json",
) -> JobPublic | Response:
    """The job's status; with ``done``, its ``text`` and ``segments``; with ``error``, ``error``.

    With ``wait=N`` the answer comes as soon as the job ends, or after N seconds.
    """
    if not pacer.read_allowed(owner):
        raise too_many(
            f"this key reads job status more than {settings.status_reads_per_s_per_key:g} "
            "times a second (STATUS_READS_PER_S_PER_KEY): poll with ?wait=N instead",
            retry_after=1,
        )
    job = await wait_for_end(store, ends, job_id, owner, wait)
    if wait == 0 and job.status not in ENDED:
        hold = pacer.hold(job.created_at)  # to the job's next STATUS_POLL_INTERVAL_S tick
        if hold > 0:
            job = await wait_for_end(store, ends, job_id, owner, hold)
    # A job still running: when to ask again (a client that can, asks with wait=N).
    later = {} if job.status in ENDED else {"Retry-After": str(pacer.retry_after(job.created_at))}
    if format == "json":
        public = JobPublic.from_job(job)
        if job.status == JobStatus.queued:
            public.queue_position = await asyncio.to_thread(store.queue_position, job)
        response.headers.update(later)
        return public
    result = job.result
    if job.status != JobStatus.done or result is None:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"the job is {job.status.value}: format={format} needs a done job "
            "(add wait=N to wait for it)",
            headers=later,
        )
    body = render(format, str(result.get("text", "")), list(result.get("segments", [])))
    return Response(body, media_type=MEDIA_TYPES[format])


@jobs_router.delete(
    "/{job_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={404: {"model": ErrorBody}},
)
async def delete_job(job_id: str, owner: OwnerDep, store: StoreDep, runner: RunnerDep) -> Response:
    """Remove the job, its audio and its transcript; a running job is cancelled."""
    await own_job(store, job_id, owner)
    job = await asyncio.to_thread(store.delete, job_id)
    runner.cancel(job_id)
    if job is not None and job.audio_path:
        Path(job.audio_path).unlink(missing_ok=True)
    logger.info("job %s deleted", job_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
