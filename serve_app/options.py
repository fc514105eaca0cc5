"""Per-job options, sent as form fields beside the file."""

from __future__ import annotations

from typing import Any, Literal

from faster_whisper.tokenizer import _LANGUAGE_CODES
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from serve_app.errors import UploadError, describe


class JobOptions(BaseModel):
    """How to transcribe one job; the Whisper deployment applies them per window."""

    model_config = ConfigDict(extra="forbid")

    language: str | None = Field(
        default=None, description="ISO 639-1 code such as fr or en; detected when left out"
    )
    task: Literal["transcribe", "translate"] = Field(
        default="transcribe", description="translate: into English"
    )
    vad_filter: bool = Field(default=True, description="drop silence before decoding")
    word_timestamps: bool = Field(default=False, description="time every word of every segment")
    initial_prompt: str | None = Field(
        default=None, max_length=1000, description="words to prime the model with (names, terms)"
    )
    hotwords: str | None = Field(
        default=None,
        max_length=1000,
        description="words to favour (names, terms), as faster-whisper's hotwords",
    )
    multilingual: bool = Field(
        default=False,
        description="detect the language of every 30 s window, not only the first "
        "(mixed-language audio; each segment says its language)",
    )
    pack: bool = Field(
        default=True,
        description="a short job may share an encoder pass with other short jobs of the "
        "same API key and pack_group (its decode still hears only its own audio); "
        "false: never",
    )
    pack_group: str | None = Field(
        default=None,
        max_length=128,
        pattern=r"^[A-Za-z0-9._:@-]*$",
        description="a finer packing group than the API key (an end user or tenant id): "
        "only jobs of the same key and group share an encoder pass",
    )

    @field_validator("language")
    @classmethod
    def _known_language(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        code = value.strip().lower()
        if code not in _LANGUAGE_CODES:
            raise ValueError(f"{value!r} is not a Whisper language code (en, fr, de, es...)")
        return code


OPENAPI_FIELDS: dict[str, Any] = {
    name: {k: v for k, v in schema.items() if k != "title"}
    for name, schema in JobOptions.model_json_schema()["properties"].items()
}


def parse_options(fields: dict[str, str]) -> dict[str, Any]:
    """Validate the form fields sent beside ``file``; 400 with what to fix."""
    try:
        options = JobOptions.model_validate(fields)
    except ValidationError as exc:
        raise UploadError(400, f"invalid options: {describe(exc.errors(), 'form')}") from None
    return options.model_dump(exclude_defaults=True)
