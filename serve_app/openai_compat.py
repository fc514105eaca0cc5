"""OpenAI-compatible transcription endpoints, for clients written against the OpenAI SDK.

    OpenAI(base_url="http://host:8000/v1", api_key=KEY).audio.transcriptions.create(...)

Requests go through the same job queue as ``POST /transcribe`` (so they are
batched, recorded and retried) and the answer waits for the job to end.
Errors take OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from fastapi.responses import JSONResponse

from deployments.protocol import TranscribeOptions
from serve_app.auth import OwnerDep, require_api_key
from serve_app.deps import EndsDep, RunnerDep, SettingsDep, StoreDep
from serve_app.ends import EndWatcher
from serve_app.errors import UploadError
from serve_app.formats import MEDIA_TYPES, render
from serve_app.intake import accept_job, wait_for_end
from serve_app.options import parse_options
from serve_app.runner import JobRunner
from serve_app.settings import Settings
from serve_app.store import JobStatus, JobStore
from serve_app.uploads import multipart_openapi

# How long a request waits for its job before answering with the job id to poll.
OPENAI_WAIT_S = 600
RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
MODEL_ALIASES = ("whisper-1",)

router = APIRouter(prefix="/v1", tags=["openai"], dependencies=[Depends(require_api_key)])

_FORM = multipart_openapi(
    {
        "model": {"type": "string", "default": "whisper-1"},
        "language": {"type": "string"},
        "prompt": {"type": "string", "maxLength": 1000},
        "temperature": {"type": "number", "minimum": 0, "maximum": 1},
        "response_format": {"type": "string", "enum": list(RESPONSE_FORMATS)},
        "timestamp_granularities[]": {"type": "string", "enum": ["segment", "word"]},
    }
)
_ANSWERS: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "the transcript, in the response_format asked for",
        "content": {
            "application/json": {"schema": {"type": "object"}},
            "text/plain": {"schema": {"type": "string"}},
            "application/x-subrip": {"schema": {"type": "string"}},
            "text/vtt": {"schema": {"type": "string"}},
        },
    },
    "4XX": {
        "description": 'OpenAI\'s error shape: {"error": {"message", "type", "param", "code"}}'
    },
}


def error_body(status_code: int, message: str, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error object for an HTTP status."""
    kind = {401: "authentication_error", 429: "rate_limit_error"}.get(
        status_code, "server_error" if status_code >= 500 else "invalid_request_error"
    )
    code = {401: "invalid_api_key", 404: "not_found", 413: "file_too_large"}.get(status_code)
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


PACK_HEADER = "X-Whisper-Pack"
PACK_GROUP_HEADER = "X-Whisper-Pack-Group"


def job_options(
    fields: dict[str, str], task: str, settings: Settings, headers: Mapping[str, str] | None = None
) -> TranscribeOptions:
    """Map OpenAI's form fields (and our packing headers) onto this server's job options."""
    model = fields.get("model", MODEL_ALIASES[0])
    if model not in (*MODEL_ALIASES, settings.whisper_model):
        raise UploadError(
            400,
            f"model {model!r} is not served here: use 'whisper-1' (this server runs "
            f"{settings.whisper_model})",
            "model",
        )
    if fields.get("response_format", "json") not in RESPONSE_FORMATS:
        raise UploadError(
            400, f"response_format must be one of {', '.join(RESPONSE_FORMATS)}", "response_format"
        )
    granularities = set(fields.get("timestamp_granularities[]", "segment").split(","))
    if not granularities <= {"segment", "word"}:
        raise UploadError(
            400, "timestamp_granularities[] takes segment and word", "timestamp_granularities[]"
        )
    temperature = fields.get("temperature", "0")
    try:
        if not 0 <= float(temperature) <= 1:
            raise ValueError
    except ValueError:
        raise UploadError(400, "temperature must be a number from 0 to 1", "temperature") from None
    options: dict[str, Any] = {"task": task}
    if "word" in granularities:
        options["word_timestamps"] = True
    if fields.get("prompt"):
        options["initial_prompt"] = fields["prompt"]
    if task == "transcribe" and fields.get("language"):
        options["language"] = fields["language"]
    # OpenAI's form has no packing fields: two headers stand for /transcribe's.
    for header, option in ((PACK_HEADER, "pack"), (PACK_GROUP_HEADER, "pack_group")):
        if headers is not None and header in headers:
            options[option] = headers[header]
    try:
        return parse_options(options)
    except UploadError as exc:
        for header, option in ((PACK_HEADER, "pack"), (PACK_GROUP_HEADER, "pack_group")):
            if f"{option}:" in exc.message:
                message = exc.message.replace(f"{option}:", f"{header}:")
                raise UploadError(400, message, header) from None
        raise


async def _run(
    request: Request,
    task: Literal["transcribe", "translate"],
    owner: str,
    settings: Settings,
    store: JobStore,
    runner: JobRunner,
    ends: EndWatcher,
) -> Response:
    fields: dict[str, str] = {}

    def options_from(form: dict[str, str]) -> TranscribeOptions:
        fields.update(form)
        return job_options(form, task, settings, request.headers)

    job, _created = await accept_job(
        request,
        owner=owner,
        settings=settings,
        store=store,
        runner=runner,
        options_from=options_from,
    )
    job = await wait_for_end(store, ends, job.id, owner, OPENAI_WAIT_S)
    if job.status == JobStatus.error:
        code = status.HTTP_400_BAD_REQUEST if job.error_code == "invalid_audio" else 500
        raise HTTPException(code, job.error or "transcription failed")
    result = job.result
    if job.status != JobStatus.done or result is None:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            f"the transcription is still {job.status.value} after {OPENAI_WAIT_S} s; "
            f"poll GET /transcribe/{job.id}",
            headers={"Retry-After": "30"},
        )
    text = str(result.get("text", ""))
    segments = list(result.get("segments", []))
    fmt = fields.get("response_format", "json")
    if fmt == "json":
        return JSONResponse({"text": text})
    if fmt == "verbose_json":
        verbose: dict[str, Any] = {
            "task": task,
            "language": result.get("language"),
            "duration": result.get("duration"),
            "text": text,
            "segments": [{k: v for k, v in s.items() if k != "words"} for s in segments],
        }
        if job.options.get("word_timestamps"):
            verbose["words"] = [
                {"word": w["word"].strip(), "start": w["start"], "end": w["end"]}
                for s in segments
                for w in s.get("words") or []
            ]
        return JSONResponse(verbose)
    ours = "txt" if fmt == "text" else fmt
    return Response(render(ours, text, segments), media_type=MEDIA_TYPES[ours])


@router.post("/audio/transcriptions", openapi_extra=_FORM, responses=_ANSWERS)
async def transcriptions(
    request: Request,
    owner: OwnerDep,
    settings: SettingsDep,
    store: StoreDep,
    runner: RunnerDep,
    ends: EndsDep,
) -> Response:
    """Speech to text in its own language (OpenAI's ``audio.transcriptions.create``)."""
    return await _run(request, "transcribe", owner, settings, store, runner, ends)


@router.post("/audio/translations", openapi_extra=_FORM, responses=_ANSWERS)
async def translations(
    request: Request,
    owner: OwnerDep,
    settings: SettingsDep,
    store: StoreDep,
    runner: RunnerDep,
    ends: EndsDep,
) -> Response:
    """Speech to English text (``audio.translations.create``; needs a multilingual model)."""
    return await _run(request, "translate", owner, settings, store, runner, ends)
