"""What any engine must do (deployments/interface.py ``Engine``, and the backends'
deployments/engines/contract.py ``WhisperBackend``): the fake engine of the fast tests,
and the real pipeline over each backend with tiny.en (model tier). A new engine or
backend adds itself to ENGINES or BACKENDS and passes the same tests."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from deployments.assemble import assemble
from deployments.audio import decode
from deployments.engines.contract import MAX_LENGTH, SAMPLE_RATE, WhisperBackend
from deployments.interface import AudioError, Engine, EngineConfig, Packing
from deployments.protocol import TranscribeOptions
from tests.audio_util import JFK, long_jfk, words
from tests.fakes import FakeEngine


def _pipeline(backend: str) -> Callable[[], Engine]:
    def make() -> Engine:
        if backend == "torch":
            pytest.importorskip("torch")
        from deployments.engine import WhisperEngine

        return WhisperEngine(
            EngineConfig(model="tiny.en", engine=backend, cpu_threads=2, cpu_nice=0)
        )

    return make


ENGINES = [
    pytest.param(FakeEngine, id="fake"),
    pytest.param(_pipeline("ctranslate2"), id="ctranslate2", marks=pytest.mark.model),
    pytest.param(_pipeline("torch"), id="torch", marks=pytest.mark.model),
]

BAD_AUDIO = b"BAD" + b"\x00garbage" * 100
"""Not audio to any engine (the fake refuses bytes that start with BAD)."""


@pytest.fixture(scope="module", params=ENGINES)
def engine(request: pytest.FixtureRequest) -> Engine:
    made: Engine = request.param()
    return made


def test_an_engine_decodes_at_least_one_batch_at_a_time(engine: Engine) -> None:
    assert engine.workers >= 1


def test_prepare_cuts_a_job_into_chunks_of_at_most_30_s_in_order(engine: Engine) -> None:
    options = TranscribeOptions(word_timestamps=True)
    prepared = engine.prepare(long_jfk(), options)
    assert prepared.chunks and prepared.language == "en"
    offsets = [c.offset for c in prepared.chunks]
    assert offsets == sorted(offsets)
    for chunk in prepared.chunks:
        assert 0 < chunk.duration <= 30.0 and chunk.word_timestamps and chunk.task == "transcribe"


def test_bad_input_is_an_audio_error(engine: Engine) -> None:
    with pytest.raises(AudioError):
        engine.prepare(BAD_AUDIO, TranscribeOptions())


def test_chunks_of_several_jobs_in_one_batch_give_one_result_each_in_order(
    engine: Engine,
) -> None:
    engine.set_packing(Packing(enabled=True))  # also with short jobs packed together
    try:
        jobs = [engine.prepare(audio, TranscribeOptions()) for audio in (JFK.read_bytes(),) * 2]
        jobs.append(engine.prepare(long_jfk(), TranscribeOptions()))
        for n, job in enumerate(jobs):
            for chunk in job.chunks:
                chunk.owner = chunk.pack_key = "one-key"
                chunk.packable = chunk.packable and n < 2
        chunks = [c for job in jobs for c in job.chunks]
        results = engine.run_batch(chunks)
    finally:
        engine.set_packing(Packing())
    assert len(results) == len(chunks)
    at = 0
    for job in jobs:
        mine = results[at : at + len(job.chunks)]
        at += len(job.chunks)
        transcript = assemble(job, mine)
        assert transcript.text and transcript.duration > 0
        assert transcript.text == "".join(s.text for s in transcript.segments).strip()
        for segment in transcript.segments:
            assert 0 <= segment.start <= segment.end <= transcript.duration
    # The two copies of one clip read the same, whatever they were batched with.
    first = assemble(jobs[0], results[: len(jobs[0].chunks)]).text
    second = assemble(jobs[1], results[len(jobs[0].chunks) : at - len(jobs[2].chunks)]).text
    assert words(first) == words(second)


BACKENDS = [
    pytest.param("ctranslate2", marks=pytest.mark.model),
    pytest.param("torch", marks=pytest.mark.model),
]


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> WhisperBackend:
    if request.param == "torch":
        pytest.importorskip("torch")
    from deployments.engines import registry

    return registry.load(EngineConfig(model="tiny.en", engine=request.param, cpu_threads=2))


def test_a_backend_decodes_one_prompt_per_row_of_an_encoder_pass(
    backend: WhisperBackend,
) -> None:
    from deployments.engines.tokenizer import WhisperTokenizer, load

    tokenizer = WhisperTokenizer(
        load(backend.tokenizer_json), multilingual=False, language="en", task="transcribe"
    )
    speech = decode(str(JFK))
    silence = np.zeros(SAMPLE_RATE * 5, dtype=np.float32)
    encoded = backend.encode([speech, silence])
    prompt = tokenizer.sot_sequence
    # Three prompts over two windows: the speech twice (rows), the silence once.
    out = backend.generate(
        encoded, [prompt] * 3, beam_size=1, max_length=MAX_LENGTH, rows=[0, 0, 1]
    )
    assert len(out) == 3
    said = [tokenizer.decode(g.tokens) for g in out]
    assert "ask not what your country" in words(said[0]) and said[0] == said[1]
    assert out[2].no_speech_prob > out[0].no_speech_prob
    text = [t for t in out[0].tokens if t < tokenizer.eot]
    [alignment] = backend.align(encoded, [0], tokenizer.sot_sequence, [text], [1100])
    assert len(alignment.text_indices) == len(alignment.time_indices) > 0
    assert not backend.multilingual and backend.languages == ("en",)


def test_a_sampler_draws_a_window_the_same_way_every_time_and_on_from_call_to_call(
    backend: WhisperBackend,
) -> None:
    """A window's temperature fallback samples from a sampler of its own (``sampler()``,
    at SAMPLING_SEED): the same calls on a fresh sampler give the same samples, whatever
    was sampled before; and each call draws on from the last, so the next temperature is a
    new draw, not the first one again at another temperature. (CTranslate2 seeds a thread's
    generator once, at its first draw: set_random_seed alone gave 3 different samples in 6
    calls. Seeded afresh at every temperature, a clip that looped at 0.2 looped again at
    0.4, 0.6 and 1.0.)"""
    from deployments.engines.tokenizer import WhisperTokenizer, load

    tokenizer = WhisperTokenizer(
        load(backend.tokenizer_json), multilingual=False, language="en", task="transcribe"
    )
    noise = np.random.default_rng(0).normal(0, 0.1, SAMPLE_RATE * 3).astype(np.float32)
    encoded = backend.encode([decode(str(JFK)), noise])

    def draws(sampler: object, row: int) -> list[tuple[int, ...]]:
        return [
            tuple(
                backend.generate(
                    encoded, [tokenizer.sot_sequence], beam_size=1, max_length=64,
                    rows=[row], temperature=1.0, best_of=2, sampler=sampler,
                )[0].tokens
            )
            for _ in range(3)
        ]  # fmt: skip

    first = draws(backend.sampler(), 1)
    draws(backend.sampler(), 0)  # another window's fallback between
    assert draws(backend.sampler(), 1) == first
    assert len(set(first)) == 3  # noise at temperature 1: three draws, three texts
