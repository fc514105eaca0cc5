"""What every Whisper engine supplies: encode windows, decode them, time their words.

No engine is imported here (no CTranslate2, no torch): the pipeline above the
engines (deployments/engine.py: windows, packing, continuation, loop guards,
words back to jobs) and the tools that pick an engine read only this module.
The operations are Whisper's own, as CTranslate2 exposes them, so that one
engine is a thin adapter and another implements them in PyTorch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

SAMPLE_RATE = 16_000
WINDOW_S = 30
"""Whisper's window: every input is padded to 30 s."""
N_FRAMES = 3000
"""Mel frames in one window (10 ms hop)."""
FRAMES_PER_SECOND = 100
HOP_LENGTH = SAMPLE_RATE // FRAMES_PER_SECOND
"""Samples per mel frame."""
TIME_PRECISION = 0.02
"""Seconds per timestamp token."""
ALIGN_FRAMES_PER_SECOND = 50
"""Encoder positions per second (the second convolution has stride 2)."""
SAMPLING_SEED = 0
"""A window's temperature fallback samples from a stream at this seed (``sampler``):
a file decoded twice gives the same text."""
MAX_LENGTH = 448
"""Whisper's longest token sequence, prompt included."""


@dataclass
class Generated:
    """One prompt's decoded tokens (timestamps included, no end token)."""

    tokens: list[int]
    avg_logprob: float = 0.0
    """As faster-whisper computes it: the sum of the tokens' log probabilities
    over their count plus one."""
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

    def encode(
        self,
        windows: Sequence[np.ndarray],
        *,
        clips: Sequence[Sequence[tuple[int, int]] | None] | None = None,
    ) -> Encoded:
        """Log-mel features and the encoder pass over <= 30 s windows of 16 kHz samples.

        ``clips[i]``: the sample ranges of the clips packed into window ``i``.
        Each clip's log-mel is then computed on its own (Whisper scales it by its
        loudest frame), as if decoded alone, and laid at its start frame; the
        frames between clips are padding, as after the end of a lone clip.
        """
        ...

    def generate(
        self,
        encoded: Encoded,
        prompts: Sequence[list[int]],
        *,
        beam_size: int,
        max_length: int,
        rows: Sequence[int] | None = None,
        spans: Sequence[tuple[float, float]] | None = None,
        temperature: float = 0.0,
        best_of: int = 5,
        sampler: Any = None,
    ) -> list[Generated]:
        """Decode each prompt with timestamps, under Whisper's timestamp rules.

        ``temperature`` 0: beam search (greedy for ``beam_size`` 1); above 0,
        ``best_of`` samples at that temperature, the likeliest kept (Whisper's
        temperature fallback), drawn from ``sampler`` (prompt after prompt), or
        without one each prompt from a fresh ``sampler()``.

        Prompt ``i`` decodes window ``rows[i]`` of ``encoded`` (window ``i`` when
        ``rows`` is None): one encoder pass can serve several prompts. With
        ``spans``, prompt ``i`` hears only seconds ``spans[i]`` of its window:
        elsewhere the decoder reads the encoder states of silence (see
        ``silenced``), so one clip of a packed window is decoded as if alone. A
        prompt may end with a timestamp token: decoding starts there (a clip that
        begins mid-window), and that timestamp is the first of the returned tokens.

        ``max_length`` counts the prompt, as in CTranslate2: a window gets at most
        ``min(max_length // 2, max_length - len(prompt) + 1)`` new tokens.
        """
        ...

    def sampler(self) -> Any:
        """A random stream at SAMPLING_SEED for one window's temperature fallback:
        each sampled ``generate`` draws on from where the last one left it, so the
        same calls on a fresh sampler give the same samples, whatever else was
        sampled meanwhile, and each temperature gets new draws."""
        ...

    def align(
        self,
        encoded: Encoded,
        indices: Sequence[int],
        start_sequence: list[int],
        text_tokens: Sequence[list[int]],
        num_frames: Sequence[int],
        spans: Sequence[tuple[float, float]] | None = None,
    ) -> list[Alignment]:
        """Cross-attention alignment of ``text_tokens`` with windows ``indices`` of ``encoded``.

        With ``spans``, text ``k`` is aligned hearing only ``spans[k]`` of its
        window, as it was decoded (``generate``).
        """
        ...

    def detect_language(self, samples: np.ndarray) -> list[tuple[str, float]]:
        """Language codes and probabilities for the first window, most likely first."""
        ...


def window_features(
    features_of: Callable[[list[np.ndarray]], Any],
    windows: Sequence[np.ndarray],
    clips: Sequence[Sequence[tuple[int, int]] | None] | None,
) -> Any:
    """An engine's log-mel features (windows x mels x frames, numpy or torch) for
    ``encode``: ``features_of`` over each window, or, for a window of packed
    clips, over each clip on its own, laid at its start frame (one frame per
    hop), padding between."""
    features = features_of(list(windows))
    for i, ranges in enumerate(clips or []):
        if ranges:
            own = features_of([windows[i][a:b] for a, b in ranges])
            features[i] = 0.0
            for (a, b), clip in zip(ranges, own, strict=True):
                first, last = a // HOP_LENGTH, a // HOP_LENGTH + (b - a) // HOP_LENGTH
                features[i, :, first:last] = clip[:, : last - first]
    return features


def positions(seconds: float) -> int:
    """The encoder position at ``seconds`` into a window."""
    return round(seconds * ALIGN_FRAMES_PER_SECOND)


def silenced(states: Any, silence: Any, spans: Sequence[tuple[float, float]]) -> Any:
    """Encoder states (windows x positions x width) that keep only ``spans``.

    Elsewhere each window gets ``silence``'s states (the encoder's output for a
    silent window, at the same positions): what Whisper reads where a clip's
    audio has ended. Works on numpy arrays and torch tensors alike (in place).
    """
    for k, (start, end) in enumerate(spans):
        first, last = positions(start), positions(end)
        states[k, :first] = silence[:first]
        states[k, last:] = silence[last:]
    return states
