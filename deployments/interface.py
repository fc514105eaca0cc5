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
    hotwords: str | None = None
    multilingual: bool = False
    """Detect the language of every chunk, not only the first."""
    pack: bool = True
    """Whether a short job may share an encoder pass with others (deployments/packing.py)."""
    pack_group: str | None = None
    """Only jobs of the same owner and group (and options) share an encoder pass."""


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
    owner: str = ""
    """Whose job (the API key's id): batches take owners' windows in turn."""
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
    language: str | None = None
    """Set for ``multilingual`` jobs: the language of this segment's chunk."""


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
    multilingual: bool = False
    """Each chunk has the language detected in it."""


@dataclass
class Transcript:
    text: str
    segments: list[Segment]
    language: str
    duration: float

    def to_dict(self) -> dict[str, object]:
        out = asdict(self)
        for segment in out["segments"]:
            if segment["language"] is None:  # only multilingual jobs say it per segment
                del segment["language"]
        return out


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
    """Join a job's chunk results, in order, on the original audio's timeline.

    Times are monotonic and inside the audio whatever the decoding gave: each
    segment lies inside its chunk and starts where the one before ended or
    later; each word lies inside its segment and starts where the word before
    ended or later. (Whisper's timestamps of two passes over one chunk can
    overlap by a few hundredths, and a last word's alignment can reach past
    its chunk.)
    """
    for result in results:
        if result.error is not None:
            raise AudioError(result.error)
    layout = prepared.layout
    duration = round(layout.duration, 3)
    segments: list[Segment] = []
    last = 0.0
    for chunk, result in zip(prepared.chunks, results, strict=True):
        begin, stop = chunk.offset, chunk.offset + chunk.duration

        def inside(
            t: float, is_end: bool = False, begin: float = begin, stop: float = stop
        ) -> float:
            return min(layout.original_time(min(max(t, begin), stop), is_end=is_end), duration)

        for seg in result.segments:
            start = max(inside(seg.start), last)
            end = max(inside(seg.end, is_end=True), start)
            words = None
            if seg.words is not None:
                words = []
                at = start
                for w in seg.words:
                    w_start = min(max(inside(w.start), at), end)
                    w_end = min(max(inside(w.end, is_end=True), w_start), end)
                    words.append(Word(w_start, w_end, w.word, w.probability))
                    at = w_end
            segments.append(
                Segment(
                    id=len(segments),
                    start=start,
                    end=end,
                    text=seg.text,
                    words=words,
                    language=chunk.language if prepared.multilingual else None,
                )
            )
            last = end
    text = "".join(seg.text for seg in segments).strip()
    return Transcript(text=text, segments=segments, language=prepared.language, duration=duration)
