"""Packed jobs of real speech through the real tiny.en: each keeps its own words."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import statistics

import jiwer
import numpy as np
import pytest

from deployments.assemble import assemble
from deployments.engine import WhisperEngine
from deployments.engines.contract import SAMPLE_RATE
from deployments.interface import Chunk, EngineConfig, Packing
from deployments.packing import plan_windows
from deployments.protocol import End, Finished, TranscribeOptions
from deployments.transcriber import Transcriber
from tests.audio_util import JFK, judge, real_clips, wav_bytes, words
from tests.fakes import final
from tests.unit.test_packing import ONE_KEY


@pytest.fixture(scope="module")
def engine() -> WhisperEngine:
    engine = WhisperEngine(EngineConfig(model="tiny.en", cpu_threads=2))
    engine.set_packing(Packing(enabled=True))  # off by default
    return engine


def spoken_5s(engine: WhisperEngine) -> Chunk:
    """jfk's first 5 s as one packable chunk of ONE_KEY ("And so my fellow Americans...")."""
    speech = engine.prepare(JFK.read_bytes(), TranscribeOptions(vad_filter=False)).chunks[0]
    return dataclasses.replace(
        speech, audio=speech.samples[: 5 * SAMPLE_RATE], duration=5.0, pack_key=ONE_KEY,
        packable=True,
    )  # fmt: skip


def hum_3s() -> np.ndarray:
    """A steady 440 Hz tone, 3 s: tiny.en's packed decode of it fails the guards."""
    tone = 0.3 * np.sin(np.arange(3 * SAMPLE_RATE) * 2 * np.pi * 440 / SAMPLE_RATE)
    return tone.astype(np.float32)


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
    short = spoken_5s(engine)
    quiet = dataclasses.replace(
        short, audio=np.zeros(3 * SAMPLE_RATE, dtype=np.float32), duration=3.0
    )
    assert len(plan_windows([short, quiet, short], engine.packing)) == 1
    results = engine.run_batch([short, quiet, short])
    alone = engine.run_batch([dataclasses.replace(quiet, packable=False)])[0]
    heard = words(" ".join(s.text for s in results[1].segments))
    assert not set(heard.split()) & {"fellow", "americans", "ask", "not", "and", "so", "my"}
    assert heard == words(" ".join(s.text for s in alone.segments))
    assert "fellow americans" in words(" ".join(s.text for s in results[0].segments))
    assert "fellow americans" in words(" ".join(s.text for s in results[2].segments))


@pytest.mark.model
def test_a_packed_clip_to_decode_alone_can_be_handed_back(engine: WhisperEngine) -> None:
    """``alone_later``: the guard's clip comes back marked, undecoded; the others are whole.
    (The server's batcher decodes it in a batch of its own: its neighbours need not wait.)"""
    short = spoken_5s(engine)
    hum = dataclasses.replace(short, audio=hum_3s(), duration=3.0)
    before = engine.decoded_alone
    inline = engine.run_batch([short, hum, short])
    assert engine.decoded_alone == before + 1  # decoded alone, here, after the batch
    handed = engine.run_batch([short, hum, short], alone_later=True)
    assert engine.decoded_alone == before + 2
    assert [r.again_alone for r in handed] == [False, True, False]
    assert handed[1].segments == [] and handed[1].error is None
    assert handed[0] == inline[0] and handed[2] == inline[2]
    assert not any(r.again_alone for r in inline)


@pytest.mark.model
def test_through_the_batcher_a_clip_decoded_again_alone_keeps_its_own_words(
    engine: WhisperEngine,
) -> None:
    """Three jobs of one key packed in one batch; the middle one (a tone) fails the
    guards: the Transcriber answers the two spoken jobs from that batch, the tone from
    a batch of its own, each with what it gets decoded alone."""
    transcriber = Transcriber(EngineConfig(cpu_nice=0), engine_factory=lambda _config: engine)
    transcriber.reconfigure({"pack_short_jobs": True, "batch_wait_timeout_s": 0.5})
    speech = wav_bytes(spoken_5s(engine).samples)
    options = TranscribeOptions(vad_filter=False)
    jobs = [speech, wav_bytes(hum_3s()), speech]
    hum = engine.prepare(jobs[1], options)
    alone = assemble(hum, engine.run_batch([dataclasses.replace(hum.chunks[0], packable=False)]))

    async def run() -> list[End]:
        return await asyncio.gather(
            *(final(transcriber.transcribe(job, options, owner="a")) for job in jobs)
        )

    before = engine.decoded_alone
    ends = asyncio.run(run())
    assert engine.decoded_alone == before + 1
    assert all(isinstance(end, Finished) for end in ends), ends
    texts = [words(end.transcript.text) for end in ends if isinstance(end, Finished)]
    assert "fellow americans" in texts[0] and "fellow americans" in texts[2], texts
    assert texts[1] == words(alone.text), (texts[1], alone.text)
