"""Decoding and cutting audio into windows the encoder takes (<= 30 s).

PyAV and faster-whisper's VAD are imported when first used, so the pipeline
(deployments/engine.py) loads on a machine with only an engine's packages
(the GPU check, bench/gpu_check.py, runs it that way).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, BinaryIO

import numpy as np

from deployments.engines.contract import SAMPLE_RATE, WINDOW_S

if TYPE_CHECKING:
    import av
    from faster_whisper.vad import SpeechTimestampsMap


class AudioTooLong(ValueError):
    """Decoding went past the most audio allowed."""


def decode(source: BinaryIO | str, *, max_seconds: float | None = None) -> np.ndarray:
    """Decode any container PyAV reads to 16 kHz mono float32.

    Stops as soon as more than ``max_seconds`` come out, so a small file that
    expands to hours of audio costs at most that much memory.
    """
    import av

    limit = None if max_seconds is None else int(max_seconds * SAMPLE_RATE)
    resampler = av.audio.resampler.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
    pieces: list[np.ndarray] = []
    total = 0
    with av.open(source, mode="r", metadata_errors="ignore") as container:
        for frame in _skip_invalid(container.decode(audio=0)):
            for out in resampler.resample(frame):
                samples = out.to_ndarray().reshape(-1)
                pieces.append(samples)
                total += samples.size
                if limit is not None and total > limit:
                    raise AudioTooLong(f"the audio is longer than {max_seconds:.0f} s")
        for out in resampler.resample(None):
            pieces.append(out.to_ndarray().reshape(-1))
    # Into one float32 array piece by piece: the int16 pieces and the result are all
    # that is held (1.5x the result; concatenate-then-convert held 2.5x).
    samples = np.empty(sum(p.size for p in pieces), dtype=np.float32)
    at = 0
    for piece in pieces:
        np.multiply(piece, 1 / 32768.0, out=samples[at : at + piece.size], casting="unsafe")
        at += piece.size
    return samples


def _skip_invalid(frames: Iterator[av.AudioFrame]) -> Iterator[av.AudioFrame]:
    """Skip frames FFmpeg cannot decode, as faster-whisper does."""
    import av

    while True:
        try:
            yield next(frames)
        except StopIteration:
            return
        except av.error.InvalidDataError:
            continue


@dataclass
class SpeechLayout:
    """Where the kept speech lies in the original audio.

    Chunk offsets and decoded timestamps count kept speech only; this maps them
    back to the original timeline.
    """

    duration: float
    speech: list[dict[str, int]]
    windows: list[tuple[float, float]]

    @cached_property
    def _map(self) -> SpeechTimestampsMap:
        from faster_whisper.vad import SpeechTimestampsMap

        return SpeechTimestampsMap(self.speech, SAMPLE_RATE)

    def original_time(self, t: float, *, is_end: bool = False) -> float:
        if not self.speech:
            return round(t, 3)
        return float(self._map.get_original_time(t, is_end=is_end))


def split_speech(
    samples: np.ndarray, *, vad_filter: bool = True
) -> tuple[SpeechLayout, list[np.ndarray]]:
    """Cut audio into windows of at most 30 s.

    With ``vad_filter`` (as faster-whisper's batched pipeline does), silence is
    dropped and speech regions are packed into windows; without it, the audio
    is cut every 30 s.
    """
    from faster_whisper.vad import VadOptions, collect_chunks, get_speech_timestamps

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
    if not vad_filter:
        # Every 30 s of the audio as it is: views, not copies (a 2 h file is 460 MB).
        windows = [
            (s["start"] / SAMPLE_RATE, (s["end"] - s["start"]) / SAMPLE_RATE) for s in speech
        ]
        pieces_ = [samples[s["start"] : s["end"]] for s in speech]
        return SpeechLayout(duration=duration, speech=speech, windows=windows), pieces_
    pieces, metadata = collect_chunks(samples, speech, max_duration=WINDOW_S)
    windows = [(float(m["offset"]), float(m["duration"])) for m in metadata]
    return SpeechLayout(duration=duration, speech=speech, windows=windows), list(pieces)
