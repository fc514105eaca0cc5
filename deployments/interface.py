"""The engine interface: what a job becomes on its way through a Whisper replica.

Inside the replica only; what crosses to the gateway is deployments/protocol.py.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol

import numpy as np

from deployments.audio import SpeechLayout, SpooledWindow
from deployments.protocol import Segment, Task, TranscribeOptions

GAP_S = 1.0
"""Silence between two clips packed into one window (deployments/packing.py)."""


@dataclass
class Chunk:
    """At most 30 s of one job's audio (speech only, with VAD), to decode."""

    audio: np.ndarray | SpooledWindow
    """Its 16 kHz float32 samples, or where they lie in the job's spool (read when used)."""
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

    @property
    def samples(self) -> np.ndarray:
        """The samples (a spooled window is read anew each time: hold them only while used)."""
        return self.audio if isinstance(self.audio, np.ndarray) else self.audio.read()

    @property
    def size(self) -> int:
        """How many samples (without reading a spooled window)."""
        return self.audio.shape[0] if isinstance(self.audio, np.ndarray) else self.audio.size

    def loaded(self) -> Chunk:
        """The chunk with its samples in memory (itself if they are)."""
        return self if isinstance(self.audio, np.ndarray) else replace(self, audio=self.samples)


@dataclass
class ChunkResult:
    """What one chunk decoded to; ``error`` is set instead when it failed alone."""

    segments: list[Segment] = field(default_factory=list)
    error: str | None = None
    again_alone: bool = False
    """Packed, its words were not clear-cut: decode it again on its own (unpacked).
    Only ``run_batch(..., alone_later=True)`` hands a chunk back so."""


@dataclass
class PreparedAudio:
    chunks: list[Chunk]
    layout: SpeechLayout
    language: str
    multilingual: bool = False
    """Each chunk has the language detected in it."""


@dataclass(frozen=True)
class Packing:
    """Live-tunable packing (``user_config``)."""

    enabled: bool = False
    """Off by default (docs/architecture.md, "Packing"); serve_config's pack_short_jobs."""
    window_s: float = 28.0

    @property
    def max_clip_s(self) -> float:
        """Clips longer than this decode alone: two must fit in a window."""
        return (self.window_s - GAP_S) / 2


class AudioError(ValueError):
    """The input cannot be transcribed; retrying will not help."""


class Engine(Protocol):
    """What a deployment needs from an engine."""

    workers: int
    """How many ``run_batch`` calls may run at once (from different threads)."""

    def prepare(self, audio: bytes, options: TranscribeOptions) -> PreparedAudio:
        """Decode and cut one job's audio (blocking; runs in a thread)."""
        ...

    def run_batch(self, chunks: Sequence[Chunk], *, alone_later: bool = False) -> list[ChunkResult]:
        """Decode chunks of any jobs together; one result per chunk, never raises for one.

        ``alone_later``: a packed chunk that must be decoded again alone comes back
        marked ``again_alone`` instead (the caller queues it), so that the batch's
        other chunks need not wait for that pass.
        """
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

    @property
    def threads(self) -> int:
        """Threads for decoding on a CPU: ``cpu_threads``, or every core when it is 0."""
        return self.cpu_threads or os.cpu_count() or 1
