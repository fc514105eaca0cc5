"""What every Whisper engine supplies: encode windows, decode them, time their words.

No engine is imported here (no CTranslate2, no torch): the pipeline above the
engines (deployments/engine.py: windows, packing, continuation, loop guards,
words back to jobs) and the tools that pick an engine read only this module.
The operations are Whisper's own, as CTranslate2 exposes them, so that one
engine is a thin adapter and another implements them in PyTorch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

SAMPLE_RATE = 16_000
WINDOW_S = 30
"""Whisper's window: every input is padded to 30 s."""
N_FRAMES = 3000
"""Mel frames in one window (10 ms hop)."""
FRAMES_PER_SECOND = 100
TIME_PRECISION = 0.02
"""Seconds per timestamp token."""
ALIGN_FRAMES_PER_SECOND = 50
"""Encoder positions per second (the second convolution has stride 2)."""
MAX_LENGTH = 448
"""Whisper's longest token sequence, prompt included."""


@dataclass
class Generated:
    """One window's decoded tokens (timestamps included, no end token)."""

    tokens: list[int]
    avg_logprob: float = 0.0
    no_speech_prob: float = 0.0


@dataclass
class Alignment:
    """Which encoder position each text token lines up with (DTW path), and its probability."""

    text_indices: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    time_indices: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    token_probs: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Loaded:
    """What the log says about a loaded engine."""

    engine: str
    device: str
    dtype: str
    why: str


class Encoded(Protocol):
    """An engine's encoder output for a batch of windows (opaque to the pipeline)."""


class WhisperBackend(Protocol):
    """One Whisper engine: the operations the pipeline batches across jobs.

    Every method takes windows of any jobs at once; ``prompts`` hold one
    prompt per window ([<|startofprev|> text...] <|startoftranscript|>
    [language] [task]), so windows of different languages and initial
    prompts share a batch.
    """

    loaded: Loaded
    multilingual: bool
    languages: tuple[str, ...]
    """Language codes the model knows (``en`` alone for an English-only model)."""
    tokenizer_json: str
    """Path of the model's ``tokenizer.json``."""
    workers: int
    """How many batches may run at once (from different threads)."""

    def encode(self, windows: Sequence[np.ndarray]) -> Encoded:
        """Log-mel features and the encoder pass over <= 30 s windows of 16 kHz samples."""
        ...

    def generate(
        self,
        encoded: Encoded,
        prompts: Sequence[list[int]],
        *,
        beam_size: int,
        max_length: int,
    ) -> list[Generated]:
        """Decode each window with timestamps, under Whisper's timestamp rules.

        ``max_length`` counts the prompt, as in CTranslate2: a window gets at most
        ``min(max_length // 2, max_length - len(prompt) + 1)`` new tokens.
        """
        ...

    def align(
        self,
        encoded: Encoded,
        indices: Sequence[int],
        start_sequence: list[int],
        text_tokens: Sequence[list[int]],
        num_frames: Sequence[int],
    ) -> list[Alignment]:
        """Cross-attention alignment of ``text_tokens`` with windows ``indices`` of ``encoded``."""
        ...

    def detect_language(self, samples: np.ndarray) -> list[tuple[str, float]]:
        """Language codes and probabilities for the first window, most likely first."""
        ...
