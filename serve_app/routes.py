"""HTTP routes: health, submit a job, read a job."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.responses import JSONResponse

from serve_app.auth import require_api_key
from serve_app.deps import DispatcherDep, SettingsDep, StoreDep
from serve_app.schemas import ErrorBody, Health, JobAccepted, JobPublic
from serve_app.uploads import check_declared_length, probe_duration, receive_upload

logger = logging.getLogger("ray.serve.whisper.routes")

health_router = APIRouter()
jobs_router = APIRouter(
    prefix="/transcribe",
    tags=["jobs"],
    dependencies=[Depends(require_api_key)],
    responses={401: {"model": ErrorBody, "description": "missing or invalid bearer token"}},
)

_MULTIPART_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": "the audio"}
                    },
                }
            }
        },
    }
}


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
        400: {"model": ErrorBody},
        413: {"model": ErrorBody, "description": "file over MAX_FILE_SIZE_MB"},
        415: {"model": ErrorBody, "description": "not multipart, or not audio"},
    },
)
async def submit_job(
    request: Request, settings: SettingsDep, store: StoreDep, dispatcher: DispatcherDep
) -> JSONResponse:
    """Store the audio and queue a job; answers before any transcription."""
    limit = settings.max_file_bytes
    check_declared_length(request.headers.get("content-length"), limit)
    job_id = str(uuid.uuid4())
    settings.upload_dir.mkdir(parents=True, exist_ok=True)
    dest = settings.upload_dir / f"{job_id}.audio"
    upload = await receive_upload(
        request.headers.get("content-type"), request.stream(), dest=dest, limit=limit
    )
    try:
        duration = await asyncio.to_thread(probe_duration, dest)
        await asyncio.to_thread(
            store.create,
            job_id=job_id,
            size_bytes=upload.size,
            duration=duration,
            audio_path=str(dest),
            options={},
        )
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    dispatcher.submit(job_id)
    logger.info(
        "job %s queued: %d bytes, %s s of audio",
        job_id,
        upload.size,
        "?" if duration is None else f"{duration:.1f}",
    )
    return JSONResponse(
        JobAccepted(job_id=job_id).model_dump(mode="json"),
        status_code=status.HTTP_202_ACCEPTED,
        headers={"Location": f"/transcribe/{job_id}"},
    )


@jobs_router.get(
    "/{job_id}",
    response_model=JobPublic,
    response_model_exclude_none=True,
    responses={404: {"model": ErrorBody}},
)
async def get_job(job_id: str, store: StoreDep) -> JobPublic:
    """The job's status; with ``done``, its ``text`` and ``segments``; with ``error``, ``error``."""
    job = await asyncio.to_thread(store.get, job_id)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no job {job_id!r}")
    return JobPublic.from_job(job)
