"""Packed short jobs on real speech: each keeps its own words (deployments/packing.py)."""

from __future__ import annotations

import numpy as np

from deployments.engine import before_loop
from deployments.engines import timing
from deployments.engines.contract import SAMPLE_RATE, TIME_PRECISION, silenced
from deployments.interface import Chunk
from deployments.packing import Window

ONE_KEY = "one-api-key|same-options"


def chunk(seconds: float, owner: str = ONE_KEY) -> Chunk:
    samples = np.zeros(int(seconds * SAMPLE_RATE), dtype=np.float32)
    return Chunk(
        audio=samples, offset=0.0, duration=seconds, prompt=[1], language="en",
        task="transcribe", beam_size=5, pack_key=owner, packable=True,
    )  # fmt: skip


def test_packed_clips_start_on_the_timestamp_grid() -> None:
    window = Window.of(0, chunk(1.234))
    window.add(1, chunk(2.0))
    window.add(2, chunk(0.5))
    for start in window.starts[1:]:
        assert round(start / TIME_PRECISION, 6) == round(start / TIME_PRECISION)
        assert start >= 1.234 + 1.0
    assert window.samples.shape[0] == round(window.duration * SAMPLE_RATE)
    clips = window.clips
    assert clips is not None and [b - a for a, b in clips] == [19744, 32000, 8000]
    assert clips[1][0] == round(window.starts[1] * SAMPLE_RATE)
    assert Window.of(0, chunk(3.0)).clips is None


def test_a_decode_hears_only_its_span() -> None:
    states = np.arange(2 * 1500 * 2, dtype=np.float32).reshape(2, 1500, 2)
    silence = -np.ones((1500, 2), dtype=np.float32)
    out = silenced(states.copy(), silence, [(1.0, 2.0), (0.0, 30.0)])
    assert (out[0, :50] == -1).all() and (out[0, 100:] == -1).all()
    assert (out[0, 50:100] == states[0, 50:100]).all()
    assert (out[1] == states[1]).all()


def test_a_decode_that_starts_mid_window_opens_its_segment_there() -> None:
    from deployments.engines.tokenizer import WhisperTokenizer, load

    vocabulary = load(str(_tiny_tokenizer()))
    tokenizer = WhisperTokenizer(vocabulary, multilingual=False, language="en", task="transcribe")
    begin = tokenizer.timestamp_begin
    text = tokenizer.encode(" Hello there.")
    pieces, _ = timing.split_by_timestamps(
        tokenizer, [begin + 600, *text, begin + 700], time_offset=0.0, duration=30.0
    )
    assert [(p["start"], p["end"]) for p in pieces] == [(12.0, 14.0)]


def _tiny_tokenizer() -> str:
    from deployments.models import resolve_model

    return f"{resolve_model('tiny.en', cache_dir='data/models')}/tokenizer.json"


def test_a_segment_that_says_again_what_came_before_is_a_loop() -> None:
    said = {"text": " I hope that we shall both forget this unhappy morning."}
    again = {"text": " I hope that we shall both forget this unhappy morning."}
    assert before_loop([said, again]) == [said]
    assert before_loop([said, {"text": " Ask not, ask not."}]) == [
        said,
        {"text": " Ask not, ask not."},
    ]
