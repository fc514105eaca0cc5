"""Streaming multipart uploads with a size limit, and a probe of what arrived.

FastAPI's ``UploadFile`` reads the whole body before the route runs; here the
body is parsed as it arrives and cut off at the limit.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import av
from python_multipart.multipart import MultipartParser, parse_options_header

from serve_app.errors import UploadError

FILE_FIELD = "file"
# Room for the multipart envelope (boundaries, part headers, small fields)
# when judging a declared Content-Length against the file limit.
ENVELOPE_BYTES = 64 * 1024
MAX_FIELD_BYTES = 16 * 1024
# Form fields beside the file, and the bytes of one part's headers: a form has a
# dozen fields; more is an attack on the parser (30,000 fields were read whole).
MAX_FIELDS = 64
MAX_PART_HEADER_BYTES = 8 * 1024
# RFC 2046: a boundary is 1 to 70 characters.
MAX_BOUNDARY = 70


@dataclass
class Upload:
    path: Path
    size: int = 0
    filename: str | None = None
    fields: dict[str, str] = field(default_factory=dict)
    digest: Any = field(default_factory=hashlib.sha256)

    @property
    def sha256(self) -> str:
        return str(self.digest.hexdigest())


def _mb(n: int) -> str:
    return f"{n / 1_000_000:.1f} MB"


def too_large(limit: int, size: int | None = None) -> UploadError:
    what = f"the file is {_mb(size)}" if size is not None else "the file is over the limit"
    return UploadError(413, f"{what}; the limit is {limit / 1_000_000:g} MB (MAX_FILE_SIZE_MB)")


def multipart_openapi(fields: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI for a route that parses its own multipart body: ``file`` plus ``fields``.

    (The routes read the body as a stream, so FastAPI cannot describe it.)
    """
    properties = {"file": {"type": "string", "format": "binary", "description": "the audio"}}
    schema = {"type": "object", "required": ["file"], "properties": properties | fields}
    return {
        "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}
    }


def check_declared_length(content_length: str | None, limit: int) -> None:
    """Refuse from the headers alone, before any of the body is read."""
    if content_length and content_length.isdigit() and int(content_length) > limit + ENVELOPE_BYTES:
        raise too_large(limit, int(content_length))


class _FormWriter:
    """python-multipart callbacks: the ``file`` part goes to disk, small fields to memory."""

    def __init__(self, upload: Upload, limit: int) -> None:
        self.upload = upload
        self.limit = limit
        self._header_field = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._name: str | None = None
        self._value = bytearray()
        self._out: IO[bytes] | None = None
        self._seen_file = False
        self._parts = 0

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda d, s, e: self._add("_header_field", d[s:e]),
            "on_header_value": lambda d, s, e: self._add("_header_value", d[s:e]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }

    def _add(self, attr: str, data: bytes) -> None:
        value = getattr(self, attr) + data
        if len(value) > MAX_PART_HEADER_BYTES:
            raise UploadError(400, f"a part's headers are over {MAX_PART_HEADER_BYTES} bytes")
        setattr(self, attr, value)

    def _part_begin(self) -> None:
        self._parts += 1
        if self._parts > MAX_FIELDS + 1:
            raise UploadError(400, f"the form has more than {MAX_FIELDS} fields beside 'file'")
        self._headers, self._name, self._value = {}, None, bytearray()

    def _header_end(self) -> None:
        self._headers[self._header_field.strip().lower()] = self._header_value.strip()
        self._header_field = self._header_value = b""

    def _headers_finished(self) -> None:
        _disp, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._name = params.get(b"name", b"").decode("utf-8", "replace")
        if self._name != FILE_FIELD and b"filename" in params:
            raise UploadError(
                400,
                f"a file came in field {self._name[:40]!r}: send the audio in a field named "
                "'file' (-F 'file=@audio.mp3')",
                param=FILE_FIELD,
            )
        if self._name == FILE_FIELD:
            if self._seen_file:
                raise UploadError(400, "send one file per request (field 'file')")
            self._seen_file = True
            raw = params.get(b"filename")
            self.upload.filename = raw.decode("utf-8", "replace") if raw else None
            self._out = self.upload.path.open("wb")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._out is not None:
            self.upload.size += end - start
            if self.upload.size > self.limit:
                raise too_large(self.limit)
            self._out.write(data[start:end])
            self.upload.digest.update(data[start:end])
        else:
            self._value += data[start:end]
            if len(self._value) > MAX_FIELD_BYTES:
                raise UploadError(413, f"form field {self._name!r} is over {MAX_FIELD_BYTES} bytes")

    def _part_end(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None
        elif self._name:
            value = self._value.decode("utf-8", "replace")
            # A repeated field (timestamp_granularities[]) keeps every value.
            previous = self.upload.fields.get(self._name)
            self.upload.fields[self._name] = value if previous is None else f"{previous},{value}"

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None

    @property
    def seen_file(self) -> bool:
        return self._seen_file


def body_too_large(limit: int) -> UploadError:
    return UploadError(
        413,
        f"the request body is over {_mb(limit + ENVELOPE_BYTES)}; the file limit is "
        f"{limit / 1_000_000:g} MB (MAX_FILE_SIZE_MB)",
    )


async def _guarded(
    body: AsyncIterator[bytes], *, limit: int, idle_s: float, total_s: float
) -> AsyncIterator[bytes]:
    """``body``, cut off when it stalls for ``idle_s``, lasts past ``total_s``, or grows
    past the file limit plus the envelope (a chunked body declares no length)."""
    deadline = time.monotonic() + total_s
    received = 0
    chunks = aiter(body)
    while True:
        left = deadline - time.monotonic()
        try:
            data = await asyncio.wait_for(anext(chunks), min(idle_s, max(left, 0.0)))
        except StopAsyncIteration:
            return
        except TimeoutError:
            if left <= idle_s:
                raise UploadError(
                    408, f"the upload did not arrive within {total_s:g} s (UPLOAD_TIMEOUT_S)"
                ) from None
            raise UploadError(
                408, f"the upload sent nothing for {idle_s:g} s (UPLOAD_IDLE_TIMEOUT_S)"
            ) from None
        received += len(data)
        if received > limit + ENVELOPE_BYTES:
            raise body_too_large(limit)
        yield data


async def receive_upload(
    content_type: str | None,
    body: AsyncIterator[bytes],
    *,
    dest: Path,
    limit: int,
    idle_s: float,
    total_s: float,
) -> Upload:
    """Parse a multipart body as it streams in, writing field ``file`` to ``dest``.

    Raises UploadError (and leaves no file behind) for anything it refuses,
    among them a body that stalls for ``idle_s`` or takes longer than ``total_s``.
    """
    ctype, params = parse_options_header(content_type)
    if ctype != b"multipart/form-data" or b"boundary" not in params:
        raise UploadError(
            415,
            "send the audio as multipart/form-data with a field named 'file' "
            "(curl -F 'file=@audio.mp3')",
        )
    boundary = params[b"boundary"]
    if not 0 < len(boundary) <= MAX_BOUNDARY:
        raise UploadError(400, f"the multipart boundary must be 1 to {MAX_BOUNDARY} characters")
    upload = Upload(path=dest)
    writer = _FormWriter(upload, limit)
    parser = MultipartParser(boundary, writer.callbacks())  # type: ignore[arg-type]
    try:
        async for data in _guarded(body, limit=limit, idle_s=idle_s, total_s=total_s):
            parser.write(data)
        parser.finalize()
        if not writer.seen_file:
            raise UploadError(400, "no field named 'file': send the audio as -F 'file=@audio.mp3'")
        if upload.size == 0:
            raise UploadError(400, "the file is empty")
    except UploadError:
        writer.close()
        dest.unlink(missing_ok=True)
        raise
    except Exception as exc:  # malformed multipart from python-multipart
        writer.close()
        dest.unlink(missing_ok=True)
        raise UploadError(400, f"the multipart body could not be parsed: {exc}") from exc
    return upload


def too_long(duration: float, limit: float) -> UploadError:
    return UploadError(
        413,
        f"the audio lasts {duration:.0f} s; the limit is {limit:.0f} s (MAX_AUDIO_SECONDS): "
        "split it or ask the operator to raise the limit",
    )


def probe_duration(path: Path) -> float | None:
    """Check that the file holds audio and return its length in seconds (None if unknown).

    Reads the container headers only, not the whole stream.
    """
    try:
        with av.open(str(path), mode="r", metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise UploadError(
                    415,
                    "the file holds no audio stream: send audio "
                    "(mp3, wav, m4a, ogg, flac, webm...)",
                )
            stream = container.streams.audio[0]
            if stream.duration is not None and stream.time_base is not None:
                return float(stream.duration * stream.time_base)
            if container.duration is not None:
                return container.duration / 1_000_000
            return None
    except UploadError:
        raise
    except Exception as exc:  # PyAV raises FFmpeg errors of many types
        raise UploadError(
            415, f"the file is not audio that can be read ({type(exc).__name__})"
        ) from exc
