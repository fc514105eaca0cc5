"""Decoding and cutting audio into windows the encoder takes (<= 30 s)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
from faster_whisper.audio import decode_audio
from faster_whisper.vad import (
    SpeechTimestampsMap,
    VadOptions,
    collect_chunks,
    get_speech_timestamps,
)

SAMPLE_RATE = 16_000
WINDOW_S = 30


def decode(source: BinaryIO | str) -> np.ndarray:
    """Decode any container PyAV reads to 16 kHz mono float32."""
    return np.asarray(decode_audio(source, sampling_rate=SAMPLE_RATE), dtype=np.float32)


@dataclass
class SpeechLayout:
    """Where the kept speech lies in the original audio.

    Chunk offsets and decoded timestamps count kept speech only; this maps them
    back to the original timeline.
    """

    duration: float
    speech: list[dict[str, int]]
    windows: list[tuple[float, float]]

    def original_time(self, t: float, *, is_end: bool = False) -> float:
        if not self.speech:
            return round(t, 3)
        return float(
            SpeechTimestampsMap(self.speech, SAMPLE_RATE).get_original_time(t, is_end=is_end)
        )


def split_speech(
    samples: np.ndarray, *, vad_filter: bool = True
) -> tuple[SpeechLayout, list[np.ndarray]]:
    """Cut audio into windows of at most 30 s.

    With ``vad_filter`` (as faster-whisper's batched pipeline does), silence is
    dropped and speech regions are packed into windows; without it, the audio
    is cut every 30 s.
    """
    duration = samples.shape[0] / SAMPLE_RATE
    if vad_filter:
        speech = get_speech_timestamps(
            samples,
            VadOptions(max_speech_duration_s=WINDOW_S, min_silence_duration_ms=160),
        )
    else:
        step = WINDOW_S * SAMPLE_RATE
        speech = [
            {"start": start, "end": min(start + step, samples.shape[0])}
            for start in range(0, samples.shape[0], step)
        ]
    if not speech:
        return SpeechLayout(duration=duration, speech=[], windows=[]), []
    pieces, metadata = collect_chunks(samples, speech, max_duration=WINDOW_S)
    windows = [(float(m["offset"]), float(m["duration"])) for m in metadata]
    return SpeechLayout(duration=duration, speech=speech, windows=windows), list(pieces)
