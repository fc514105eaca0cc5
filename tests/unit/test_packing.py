"""Packed short jobs on real speech: each keeps its own words (deployments/packing.py)."""

from __future__ import annotations

import dataclasses
import random
import statistics

import jiwer
import numpy as np
import pytest

from deployments.engine import WhisperEngine, before_loop
from deployments.engines import timing
from deployments.engines.contract import SAMPLE_RATE, TIME_PRECISION, silenced
from deployments.interface import Chunk, EngineConfig, TranscribeOptions
from deployments.packing import Packing, Window, plan_windows
from tests.audio_util import JFK, judge, real_clips, wav_bytes, words

ONE_KEY = "one-api-key|same-options"


def chunk(seconds: float, owner: str = ONE_KEY) -> Chunk:
    samples = np.zeros(int(seconds * SAMPLE_RATE), dtype=np.float32)
    return Chunk(
        samples=samples, offset=0.0, duration=seconds, prompt=[1], language="en",
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


@pytest.fixture(scope="module")
def engine() -> WhisperEngine:
    engine = WhisperEngine(EngineConfig(model="tiny.en", cpu_threads=2))
    engine.set_packing(Packing(enabled=True))  # off by default
    return engine


@pytest.mark.model
def test_packed_real_clips_keep_their_own_words(engine: WhisperEngine) -> None:
    """Thirty clips of real speech cut at pauses, for one key, in one batch.

    Before each clip had a decode of its own (the windows were split by word
    times), such a round gave other clips' words to some jobs ("If the" of
    one reading at the end of the clip before), emptied some, and cut last words.
    """
    clips = real_clips()
    chunks = [engine.prepare(wav_bytes(s), TranscribeOptions()).chunks[0] for _, s in clips]
    for c in chunks:
        c.pack_key = ONE_KEY
    picks = random.Random(1).choices(range(len(chunks)), k=30)
    assert len(plan_windows([chunks[i] for i in picks], engine.packing)) < 15
    alone = {
        i: words(" ".join(s.text for s in engine.run_batch([
            dataclasses.replace(chunks[i], packable=False)])[0].segments))
        for i in set(picks)
    }  # fmt: skip
    results = engine.run_batch([dataclasses.replace(chunks[i]) for i in picks])
    errors = []
    for i, result in zip(picks, results, strict=True):
        packed = words(" ".join(s.text for s in result.segments))
        others = [alone[j] for j in set(picks) if alone[j] != alone[i]]
        verdict = judge(packed, alone[i], others)
        assert not any(verdict.values()), (clips[i][0], alone[i], packed, verdict)
        errors.append(jiwer.wer(alone[i], packed) if alone[i] else float(bool(packed)))
        for s in result.segments:
            assert 0 <= s.start <= s.end <= chunks[i].duration + 1e-6
    # A word can come out differently in another context (the measured mean
    # is in bench/results/packing.json), but not often.
    assert statistics.mean(errors) <= 0.05, errors


@pytest.mark.model
def test_a_packed_clip_does_not_hear_its_neighbours(engine: WhisperEngine) -> None:
    """A silent clip between two spoken ones gets what it gets alone, none of theirs."""
    speech = engine.prepare(JFK.read_bytes(), TranscribeOptions(vad_filter=False)).chunks[0]
    short = dataclasses.replace(
        speech, samples=speech.samples[: 5 * SAMPLE_RATE], duration=5.0, pack_key=ONE_KEY,
        packable=True,
    )  # fmt: skip
    quiet = dataclasses.replace(
        short, samples=np.zeros(3 * SAMPLE_RATE, dtype=np.float32), duration=3.0
    )
    assert len(plan_windows([short, quiet, short], engine.packing)) == 1
    results = engine.run_batch([short, quiet, short])
    alone = engine.run_batch([dataclasses.replace(quiet, packable=False)])[0]
    heard = words(" ".join(s.text for s in results[1].segments))
    assert not set(heard.split()) & {"fellow", "americans", "ask", "not", "and", "so", "my"}
    assert heard == words(" ".join(s.text for s in alone.segments))
    assert "fellow americans" in words(" ".join(s.text for s in results[0].segments))
    assert "fellow americans" in words(" ".join(s.text for s in results[2].segments))
