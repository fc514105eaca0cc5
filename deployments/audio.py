"""Decoding and cutting audio into windows the encoder takes (<= 30 s), as a stream.

A job's audio is decoded, searched for speech and cut ``BLOCK_S`` at a time; its
samples go to a spool (an unlinked temporary file, 16-bit) and each window is read
back when a batch decodes it. So a job holds a block while it is prepared and its
windows' places after, not its whole file (issue 11: a 7,000 s silent FLAC of
1.3 MB, decoded whole, held 0.73 GB, and faster-whisper's VAD over it 1 GB more).

PyAV and faster-whisper's VAD are imported when first used, so the pipeline
(deployments/engine.py) loads on a machine with only an engine's packages
(the GPU check, bench/gpu_check.py, runs it that way).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, BinaryIO

import numpy as np

from deployments.engines.contract import SAMPLE_RATE, WINDOW_S

if TYPE_CHECKING:
    import av
    from faster_whisper.vad import SpeechTimestampsMap

BLOCK_S = 300
"""Seconds of audio decoded, searched for speech and cut at a time (a multiple of 30 s)."""
OPEN_S = 2.0
"""A speech region ending this close to the end of what is decoded may go on (the VAD pads a
region's end by 0.4 s and joins regions 0.16 s apart): the next pass searches again from it."""


class AudioTooLong(ValueError):
    """Decoding went past the most audio allowed."""


def blocks(
    source: BinaryIO | str, *, max_seconds: float | None = None, block_s: float = BLOCK_S
) -> Iterator[np.ndarray]:
    """Decode any container PyAV reads to 16 kHz mono int16, ``block_s`` at a time.

    Stops as soon as more than ``max_seconds`` come out, so a small file that
    expands to hours of audio is refused before it costs more than that.
    """
    import av

    limit = None if max_seconds is None else int(max_seconds * SAMPLE_RATE)
    size = int(block_s * SAMPLE_RATE)
    resampler = av.audio.resampler.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
    pieces: list[np.ndarray] = []
    held = total = 0
    with av.open(source, mode="r", metadata_errors="ignore") as container:
        frames = _skip_invalid(container.decode(audio=0))
        for out in (o for frame in frames for o in resampler.resample(frame)):
            samples = out.to_ndarray().reshape(-1)
            pieces.append(samples)
            held += samples.size
            total += samples.size
            if limit is not None and total > limit:
                raise AudioTooLong(f"the audio is longer than {max_seconds:.0f} s")
            while held >= size:
                joined = np.concatenate(pieces)
                yield joined[:size]
                pieces, held = [joined[size:]], joined.size - size
        pieces += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]
    if pieces and (rest := np.concatenate(pieces)).size:
        yield rest


def to_float(pcm: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """int16 samples as float32 in [-1, 1), as faster-whisper's decode_audio gives them
    (into ``out`` when given)."""
    return np.multiply(pcm, np.float32(1 / 32768.0), out=out, dtype=np.float32)


def decode(source: BinaryIO | str, *, max_seconds: float | None = None) -> np.ndarray:
    """The whole audio as 16 kHz mono float32 (for tools and tests; jobs go through ``cut``)."""
    parts = list(blocks(source, max_seconds=max_seconds))
    # Into one float32 array block by block: the int16 blocks and the result are all
    # that is held (1.5x the result; concatenate-then-convert held 2.5x).
    samples = np.empty(sum(p.size for p in parts), dtype=np.float32)
    at = 0
    for part in parts:
        to_float(part, out=samples[at : at + part.size])
        at += part.size
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


class Spool:
    """One job's decoded audio: 16-bit samples in an unlinked temporary file.

    Nothing else can open it, and it is gone when the job's windows are (or the
    process is). Reads give float32 copies of a range.
    """

    def __init__(self) -> None:
        # Closed with the spool (the last window's reference): no ``with`` spans that.
        self._file = tempfile.TemporaryFile(prefix="whisper-audio-")  # noqa: SIM115
        self.size = 0
        """Samples written."""

    def append(self, pcm: np.ndarray) -> None:
        self._file.write(np.ascontiguousarray(pcm, dtype=np.int16).data)
        self.size += pcm.size

    def read(self, start: int, stop: int) -> np.ndarray:
        self._file.flush()
        raw = os.pread(self._file.fileno(), 2 * (stop - start), 2 * start)
        return to_float(np.frombuffer(raw, dtype=np.int16))


@dataclass(frozen=True)
class SpooledWindow:
    """Where a window's samples lie in its job's spool: speech regions, joined when read."""

    spool: Spool
    regions: tuple[tuple[int, int], ...]

    @property
    def size(self) -> int:
        return sum(stop - start for start, stop in self.regions)

    def read(self) -> np.ndarray:
        if len(self.regions) == 1:
            return self.spool.read(*self.regions[0])
        return np.concatenate([self.spool.read(a, b) for a, b in self.regions])


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


def cut(
    source: BinaryIO | str,
    *,
    vad_filter: bool = True,
    max_seconds: float | None = None,
    block_s: float | None = None,
) -> tuple[SpeechLayout, list[SpooledWindow]]:
    """Decode and cut audio into windows of at most 30 s, ``block_s`` at a time.

    With ``vad_filter`` (as faster-whisper's batched pipeline does), silence is
    dropped and speech regions are joined into windows (faster-whisper's
    ``collect_chunks``, over the regions of the whole file); without it, the
    audio is cut every 30 s. The VAD runs over each block and the speech still
    open at its end (``OPEN_S``), so a file within one block is cut exactly as
    faster-whisper cuts it whole, and a longer one differs only where a block
    ends in a pause the VAD would have measured across.
    """
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    block_s = BLOCK_S if block_s is None else block_s
    spool = Spool()
    speech: list[dict[str, int]] = []
    searched = 0  # where the next VAD pass starts
    step = int(block_s * SAMPLE_RATE)

    def search(final: bool) -> None:
        nonlocal searched
        audio = spool.read(searched, spool.size)
        found = get_speech_timestamps(
            audio, VadOptions(max_speech_duration_s=WINDOW_S, min_silence_duration_ms=160)
        )
        edge = audio.size if final else audio.size - int(OPEN_S * SAMPLE_RATE)
        closed = [r for r in found if r["end"] < edge or final]
        speech.extend({"start": searched + r["start"], "end": searched + r["end"]} for r in closed)
        if closed:
            searched += closed[-1]["end"]
        elif len(found) == 0:
            searched += max(edge, 0)
        # else: one open region from near the start: search again with more audio

    for pcm in blocks(source, max_seconds=max_seconds, block_s=block_s):
        if vad_filter and spool.size - searched >= step:  # more is coming: not the last pass
            search(final=False)
        spool.append(pcm)
    if vad_filter and spool.size > searched:
        search(final=True)
    if not vad_filter:
        window = int(WINDOW_S * SAMPLE_RATE)
        speech = [
            {"start": start, "end": min(start + window, spool.size)}
            for start in range(0, spool.size, window)
        ]
    layout = SpeechLayout(duration=spool.size / SAMPLE_RATE, speech=speech, windows=[])
    windows: list[SpooledWindow] = []
    # faster-whisper's collect_chunks: regions in order, a window closed when the next
    # would take it past 30 s; offsets count kept speech only.
    regions: list[tuple[int, int]] = []
    kept = held = 0
    for region in speech:
        length = region["end"] - region["start"]
        if regions and held + length > WINDOW_S * SAMPLE_RATE:
            layout.windows.append((kept / SAMPLE_RATE, held / SAMPLE_RATE))
            windows.append(SpooledWindow(spool, tuple(regions)))
            kept, regions, held = kept + held, [], 0
        regions.append((region["start"], region["end"]))
        held += length
    if regions:
        layout.windows.append((kept / SAMPLE_RATE, held / SAMPLE_RATE))
        windows.append(SpooledWindow(spool, tuple(regions)))
    return layout, windows
