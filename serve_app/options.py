"""A job's options from the form fields sent beside the file (deployments/protocol.py
declares them: the Whisper replica reads the same model)."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from deployments.protocol import SERVER_OPTIONS, TranscribeOptions
from serve_app.errors import UploadError, describe

OPENAPI_FIELDS: dict[str, Any] = {
    name: {k: v for k, v in schema.items() if k != "title"}
    for name, schema in TranscribeOptions.model_json_schema()["properties"].items()
    if name not in SERVER_OPTIONS
}


def parse_options(fields: dict[str, Any]) -> TranscribeOptions:
    """Validate the form fields sent beside ``file``; 400 with what to fix."""
    server_set = sorted(SERVER_OPTIONS & fields.keys())
    if server_set:
        raise UploadError(
            400, f"invalid options: {server_set[0]}: the server sets it, not a form field"
        )
    try:
        return TranscribeOptions.model_validate(fields)
    except ValidationError as exc:
        raise UploadError(400, f"invalid options: {describe(exc.errors(), 'form')}") from None


def stored(options: TranscribeOptions) -> dict[str, Any]:
    """As a job record keeps them: only what differs from the defaults."""
    return options.model_dump(exclude_defaults=True)
