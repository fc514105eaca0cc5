"""The engine interface: what a job becomes on its way through a Whisper replica."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np

from deployments.audio import SpeechLayout

if TYPE_CHECKING:
    from deployments.packing import Packing

Task = Literal["transcribe", "translate"]


@dataclass(frozen=True)
class TranscribeOptions:
    """Per-job decoding options."""

    language: str | None = None
    task: Task = "transcribe"
    initial_prompt: str | None = None
    vad_filter: bool = True
    word_timestamps: bool = False
    beam_size: int = 5


@dataclass
class Chunk:
    """At most 30 s of one job's audio (speech only, with VAD), to decode."""

    samples: np.ndarray
    offset: float
    duration: float
    prompt: list[int]
    language: str
    task: Task
    beam_size: int
    pack_key: str = ""
    """Chunks share a window only with the same key: the owner and the options."""
    packable: bool = False
    """The job's only chunk: it may share a window with other short jobs."""
    word_timestamps: bool = False


@dataclass
class Word:
    start: float
    end: float
    word: str
    probability: float


@dataclass
class Segment:
    id: int
    start: float
    end: float
    text: str
    words: list[Word] | None = None


@dataclass
class ChunkResult:
    """What one chunk decoded to; ``error`` is set instead when it failed alone."""

    segments: list[Segment] = field(default_factory=list)
    error: str | None = None


@dataclass
class PreparedAudio:
    chunks: list[Chunk]
    layout: SpeechLayout
    language: str


@dataclass
class Transcript:
    text: str
    segments: list[Segment]
    language: str
    duration: float

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class AudioError(ValueError):
    """The input cannot be transcribed; retrying will not help."""


class Engine(Protocol):
    """What a deployment needs from an engine."""

    workers: int
    """How many ``run_batch`` calls may run at once (from different threads)."""

    def prepare(self, audio: bytes, options: TranscribeOptions) -> PreparedAudio:
        """Decode and cut one job's audio (blocking; runs in a thread)."""
        ...

    def run_batch(self, chunks: Sequence[Chunk]) -> list[ChunkResult]:
        """Decode chunks of any jobs together; one result per chunk, never raises for one."""
        ...

    def set_packing(self, packing: Packing) -> None:
        """Whether and how short jobs share windows (live, from ``reconfigure``)."""
        ...


@dataclass(frozen=True)
class EngineConfig:
    """How to load the model; resolved by the app builder, used on the replica."""

    model: str = "tiny.en"
    engine: str = "auto"
    """``WHISPER_ENGINE``: auto, ctranslate2 or torch (deployments/engines/registry.py)."""
    device: Literal["cpu", "cuda"] = "cpu"
    compute_type: str = "auto"
    cpu_threads: int = 0
    workers: int = 0
    """Batches decoded at once (CTranslate2 workers, a model copy each); 0: 2 on CPU, 1 on CUDA.

    The torch engine decodes one batch at a time (torch uses every core itself)."""
    cache_dir: str = "data/models"
    max_audio_seconds: float | None = None
    cpu_nice: int = 10


def assemble(prepared: PreparedAudio, results: Sequence[ChunkResult]) -> Transcript:
    """Join a job's chunk results, in order, on the original audio's timeline."""
    for result in results:
        if result.error is not None:
            raise AudioError(result.error)
    layout = prepared.layout
    segments: list[Segment] = []
    for result in results:
        for seg in result.segments:
            words = None
            if seg.words is not None:
                words = [
                    Word(
                        start=layout.original_time(w.start),
                        end=layout.original_time(w.end, is_end=True),
                        word=w.word,
                        probability=w.probability,
                    )
                    for w in seg.words
                ]
            segments.append(
                Segment(
                    id=len(segments),
                    start=layout.original_time(seg.start),
                    end=layout.original_time(seg.end, is_end=True),
                    text=seg.text,
                    words=words,
                )
            )
    text = "".join(seg.text for seg in segments).strip()
    return Transcript(
        text=text,
        segments=segments,
        language=prepared.language,
        duration=round(prepared.layout.duration, 3),
    )
