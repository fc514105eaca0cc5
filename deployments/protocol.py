"""What crosses between a gateway and a Whisper replica: a job's options in, its events out.

Both sides import this module and nothing of each other's. It imports no
engine (no faster-whisper, CTranslate2 or torch) and no Ray, so the gateway and
the app builder load without them. The HTTP API shows the same models: a job's
form fields are ``TranscribeOptions``, a done job's segments are ``Segment``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Task = Literal["transcribe", "translate"]

LANGUAGE_CODES = frozenset(
    "af am ar as az ba be bg bn bo br bs ca cs cy da de el en es et eu fa fi fo fr gl gu ha "  # noqa: SIM905
    "haw he hi hr ht hu hy id is it ja jw ka kk km kn ko la lb ln lo lt lv mg mi mk ml mn mr "
    "ms mt my ne nl nn no oc pa pl ps pt ro ru sa sd si sk sl sn so sq sr su sv sw ta te tg "
    "th tk tl tr tt uk ur uz vi yi yo zh yue".split()
)
"""Whisper's languages (faster-whisper's list; a model test checks they agree)."""


class TranscribeOptions(BaseModel):
    """How to transcribe one job; the Whisper replica applies them per window."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    language: str | None = Field(
        default=None, description="ISO 639-1 code such as fr or en; detected when left out"
    )
    task: Task = Field(default="transcribe", description="translate: into English")
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
    beam_size: int = Field(default=5, ge=1, le=10, description="faster-whisper's beam size")

    @field_validator("language")
    @classmethod
    def _known_language(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        code = value.strip().lower()
        if code not in LANGUAGE_CODES:
            raise ValueError(f"{value!r} is not a Whisper language code (en, fr, de, es...)")
        return code


SERVER_OPTIONS = frozenset({"beam_size"})
"""Options the server sets, not a client: the rest are the job form's fields."""


class Word(BaseModel):
    word: str
    start: float
    end: float
    probability: float


class Segment(BaseModel):
    id: int
    start: float = Field(description="seconds from the start of the audio")
    end: float
    text: str
    words: list[Word] | None = Field(default=None, description="with word_timestamps=true")
    language: str | None = Field(
        default=None, description="with multilingual=true: the language spoken in this segment"
    )


class Transcript(BaseModel):
    """A job's result, on its audio's timeline."""

    text: str
    segments: list[Segment]
    language: str
    duration: float

    def stored(self) -> dict[str, object]:
        """As the job record keeps it (JSON); a segment says its language only when the
        job is multilingual."""
        out = self.model_dump()
        for segment in out["segments"]:
            if segment["language"] is None:
                del segment["language"]
        return out


# What a replica streams back for one job, in this order: Progress (a long
# job's language, before its end), Queued, Decoding, Progress per batch that
# ends, then one end: Finished or Rejected. Failures a retry could fix (a dead
# replica, an engine bug) raise instead.


@dataclass(frozen=True)
class Queued:
    """The job waits in the replica for a batch."""


@dataclass(frozen=True)
class Decoding:
    """Its first chunk is in a batch: the attempt timeout counts from here."""


@dataclass(frozen=True)
class Progress:
    share: float
    """Of the job's audio decoded, 0 to 1."""
    language: str | None = None


@dataclass(frozen=True)
class Finished:
    transcript: Transcript


@dataclass(frozen=True)
class Rejected:
    """The input cannot be transcribed; retrying will not help."""

    reason: str


Stage = Queued | Decoding
End = Finished | Rejected
Event = Stage | Progress | End
