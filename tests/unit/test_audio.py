"""Decoding and cutting long audio as a stream: what memory it holds (issue 11: a 7,000 s
silent FLAC of 1.3 MB took ~1.6 GB in the Whisper replica), and that the cut is
faster-whisper's, on real speech."""

from __future__ import annotations

import io
import itertools
import json
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from faster_whisper.vad import VadOptions, collect_chunks, get_speech_timestamps

from deployments.audio import SAMPLE_RATE, cut, decode
from tests.audio_util import real_speech, silent_flac, wav_bytes

ROOT = Path(__file__).resolve().parents[2]
FASTER_WHISPER_VAD = VadOptions(max_speech_duration_s=30, min_silence_duration_ms=160)


def as_sent(samples: np.ndarray) -> tuple[bytes, np.ndarray]:
    """The samples as a client sends them (16-bit WAV), and as they decode whole."""
    data = wav_bytes(samples)
    return data, decode(io.BytesIO(data))


def test_decoding_a_whole_file_holds_little_more_than_the_samples() -> None:
    data = silent_flac(600)
    tracemalloc.start()
    try:
        samples = decode(io.BytesIO(data))
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert samples.size == 600 * SAMPLE_RATE and samples.dtype == np.float32
    # The result and its int16 blocks (1.5x); concatenating then converting held 2.5x.
    assert peak < 1.7 * samples.nbytes, peak / samples.nbytes


def test_a_long_file_is_cut_holding_a_block_not_the_file() -> None:
    """7,000 s (448 MB as float32) decoded whole held 0.73 GB; cut as a stream, a block
    (300 s: 19 MB) and one window read back at a time."""
    data = silent_flac(7000)
    tracemalloc.start()
    try:
        layout, windows = cut(io.BytesIO(data), vad_filter=False)
        for window in windows:
            assert window.read().size <= 30 * SAMPLE_RATE
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(windows) == 234 and layout.duration == pytest.approx(7000, abs=0.1)
    # A block's int16 frames and their join (2 x 9.6 MB), a window read back (5.8 MB).
    assert peak < 48e6, peak / 1e6  # decoded whole, then cut: 696 MB


def test_the_vad_over_a_long_file_holds_a_block_not_the_file() -> None:
    """faster-whisper's VAD over a whole file pads a copy of it and keeps a probability per
    32 ms; over 1,800 s of real speech that and the samples grew the peak by 297 MB. In blocks,
    the process's peak grows by what one block costs."""
    probe = """
import io, json, resource, sys
from deployments.audio import cut
data = open(sys.argv[1], "rb").read()
cut(io.BytesIO(data[:200_000]))  # the VAD model loaded, its arenas warm
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
layout, windows = cut(io.BytesIO(data))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"grew_mb": (after - before) / 1024, "windows": len(windows)}))
"""
    path = ROOT / "data" / "test-vad-long.wav"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(wav_bytes(real_speech(1800)))
    try:
        out = subprocess.run(
            [sys.executable, "-c", probe, str(path)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=300,
        )
    finally:
        path.unlink()
    measured = json.loads(out.stdout.strip().splitlines()[-1])
    assert measured["windows"] > 50
    assert measured["grew_mb"] < 120, measured


def test_a_file_within_one_block_is_cut_as_faster_whisper_cuts_it() -> None:
    data, samples = as_sent(real_speech(120))
    layout, windows = cut(io.BytesIO(data))
    speech = get_speech_timestamps(samples, FASTER_WHISPER_VAD)
    pieces, metadata = collect_chunks(samples, speech, max_duration=30)
    assert layout.speech == speech
    assert layout.windows == [(m["offset"], m["duration"]) for m in metadata]
    assert len(windows) == len(pieces) > 3
    assert all(np.array_equal(w.read(), p) for w, p in zip(windows, pieces, strict=True))


def test_without_vad_a_file_is_cut_every_30_s_across_blocks() -> None:
    rng = np.random.default_rng(0)
    data, samples = as_sent(rng.normal(0, 0.1, 95 * SAMPLE_RATE).astype(np.float32))
    layout, windows = cut(io.BytesIO(data), vad_filter=False, block_s=60)
    assert layout.windows == [(0.0, 30.0), (30.0, 30.0), (60.0, 30.0), (90.0, 5.0)]
    step = 30 * SAMPLE_RATE
    assert all(
        np.array_equal(w.read(), samples[k * step : (k + 1) * step]) for k, w in enumerate(windows)
    )


def test_a_file_cut_in_blocks_keeps_the_speech_faster_whisper_finds_in_it_whole() -> None:
    """Blocks of 60 s over 400 s of real speech: the VAD runs per block and again over speech
    still open at a block's end. Every region faster-whisper finds over the whole file is
    kept, and little else is."""
    data, samples = as_sent(real_speech(400))
    layout, windows = cut(io.BytesIO(data), block_s=60)
    whole = get_speech_timestamps(samples, FASTER_WHISPER_VAD)
    kept = np.zeros(samples.size, dtype=bool)
    for region in layout.speech:
        kept[region["start"] : region["end"]] = True
    theirs = np.zeros(samples.size, dtype=bool)
    for region in whole:
        theirs[region["start"] : region["end"]] = True
    assert (theirs & ~kept).sum() < 0.005 * theirs.sum()  # speech lost at block edges
    assert (kept & ~theirs).sum() < 0.01 * theirs.sum()  # silence kept
    starts = [r["start"] for r in layout.speech]
    assert starts == sorted(starts)
    assert all(a["end"] <= b["start"] for a, b in itertools.pairwise(layout.speech))
    assert all(d <= 30.0 for _offset, d in layout.windows)
    assert sum(w.read().size for w in windows) == kept.sum()
