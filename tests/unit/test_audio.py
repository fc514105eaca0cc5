"""Decoding and cutting long audio: what memory it holds (issue 11: a 7,000 s silent FLAC
of 1.3 MB took ~1.6 GB in the Whisper replica)."""

from __future__ import annotations

import io
import tracemalloc

import numpy as np
from faster_whisper.vad import collect_chunks

from deployments.audio import SAMPLE_RATE, decode, split_speech
from tests.audio_util import silent_flac


def test_decoding_holds_little_more_than_the_samples() -> None:
    data = silent_flac(600)
    tracemalloc.start()
    try:
        samples = decode(io.BytesIO(data))
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert samples.size == 600 * SAMPLE_RATE and samples.dtype == np.float32
    # The result and its int16 pieces (1.5x); concatenating then converting held 2.5x.
    assert peak < 1.7 * samples.nbytes, peak / samples.nbytes


def test_without_vad_the_windows_are_views_of_the_audio() -> None:
    rng = np.random.default_rng(0)
    samples = rng.normal(0, 0.1, 95 * SAMPLE_RATE).astype(np.float32)
    layout, pieces = split_speech(samples, vad_filter=False)
    assert layout.windows == [(0.0, 30.0), (30.0, 30.0), (60.0, 30.0), (90.0, 5.0)]
    assert all(np.shares_memory(p, samples) for p in pieces)
    step = 30 * SAMPLE_RATE
    speech = [
        {"start": s, "end": min(s + step, samples.size)} for s in range(0, samples.size, step)
    ]
    theirs, _ = collect_chunks(samples, speech, max_duration=30)
    assert len(theirs) == len(pieces)
    assert all(np.array_equal(a, b) for a, b in zip(theirs, pieces, strict=True))
