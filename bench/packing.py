"""Packed jobs on real speech: do they keep their own words? (no Ray, in-process)

    .venv/bin/python -m bench.packing [--rounds 17 --jobs 30 --out bench/results/packing.json]

Short clips cut from real recordings at pauses (tests/audio_util.py ``REAL_CUTS``:
LibriSpeech, LJ Speech, jfk; two cut just before an onset) are decoded three ways
with the bundled tiny.en: by plain faster-whisper (``WhisperModel.transcribe``),
alone by this engine, and packed, in rounds of ``--jobs`` clips drawn at random
(repeats allowed) for one owner, as one batch, the way one API key's burst arrives.
Each packed job is compared with the same clip decoded alone:

- ``foreign``: it holds a word its clip alone does not have but another clip of its
  round does (another job's words);
- ``empty``: no text, where the clip alone has some;
- ``lost_edge``: its first or last word (alone) is missing;
- WER against alone (mean per job) and against plain faster-whisper; and, for scale,
  the clips alone with 0.1 s of silence around them against alone.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import platform
import random
import statistics
import time
from pathlib import Path
from typing import Any

import jiwer
import numpy as np

from deployments.engine import WhisperEngine
from deployments.engines.contract import SAMPLE_RATE
from deployments.interface import Chunk, EngineConfig, Packing
from deployments.protocol import TranscribeOptions
from tests.audio_util import judge, real_clips, wav_bytes, words

RESULTS = Path(__file__).parent / "results"


def text_of(result: Any) -> str:
    return words(" ".join(s.text for s in result.segments))


def solo_texts(engine: WhisperEngine, chunks: list[Chunk]) -> list[str]:
    return [text_of(engine.run_batch([dataclasses.replace(c, packable=False)])[0]) for c in chunks]


def plain_texts(clips: list[tuple[str, Any]]) -> list[str]:
    from faster_whisper import WhisperModel

    from deployments.models import resolve_model

    model = WhisperModel(
        resolve_model("tiny.en", cache_dir="data/models"), compute_type="int8", cpu_threads=2
    )
    out = []
    for _name, samples in clips:
        segments, _ = model.transcribe(samples, vad_filter=True)
        out.append(words(" ".join(s.text for s in segments)))
    return out


def measure(engine: WhisperEngine, rounds: int, jobs: int, seed: int = 0) -> dict[str, Any]:
    clips = real_clips()
    options = TranscribeOptions()
    chunks = [engine.prepare(wav_bytes(s), options).chunks[0] for _n, s in clips]
    for chunk in chunks:
        chunk.pack_key = "one-key"
    alone = solo_texts(engine, chunks)
    plain = plain_texts(clips)
    # For scale: the same clips alone with 0.1 s of silence added before and after.
    pad = np.zeros(int(0.1 * SAMPLE_RATE), dtype=np.float32)
    padded = solo_texts(
        engine,
        [
            engine.prepare(wav_bytes(np.concatenate([pad, s, pad])), options).chunks[0]
            for _n, s in clips
        ],
    )
    rng = random.Random(seed)
    counts = collections.Counter[str]()
    wer_alone: list[float] = []
    wer_packed: list[float] = []
    bad: list[dict[str, Any]] = []
    started = time.perf_counter()
    engine.decoded_alone = 0
    for r in range(rounds):
        picks = [rng.randrange(len(clips)) for _ in range(jobs)]
        results = engine.run_batch([dataclasses.replace(chunks[i]) for i in picks])
        for k, (i, result) in enumerate(zip(picks, results, strict=True)):
            others = [alone[j] for j in set(picks) if alone[j] != alone[i]]
            packed = text_of(result)
            verdict = judge(packed, alone[i], others)
            counts.update(name for name, hit in verdict.items() if hit)
            counts["jobs"] += 1
            wer_packed.append(jiwer.wer(plain[i], packed) if plain[i] else float(bool(packed)))
            wer_alone.append(jiwer.wer(alone[i], packed) if alone[i] else float(bool(packed)))
            if any(verdict.values()) or wer_alone[-1] > 0:
                bad.append(
                    {
                        "round": r,
                        "slot": k,
                        "clip": clips[i][0],
                        "alone": alone[i],
                        "packed": packed,
                        **verdict,
                    }
                )
    seconds = time.perf_counter() - started
    solo_vs_plain = [
        jiwer.wer(p, a) if p else float(bool(a)) for p, a in zip(plain, alone, strict=True)
    ]
    return {
        "clips": len(clips),
        "rounds": rounds,
        "jobs_per_round": jobs,
        "jobs": counts["jobs"],
        "foreign": counts["foreign"],
        "empty": counts["empty"],
        "lost_edge": counts["lost_edge"],
        "changed": sum(w > 0 for w in wer_alone),
        "decoded_alone_by_guard": engine.decoded_alone,
        "mean_wer_packed_vs_alone": round(statistics.mean(wer_alone), 4),
        "mean_wer_packed_vs_plain": round(statistics.mean(wer_packed), 4),
        "mean_wer_alone_vs_plain": round(statistics.mean(solo_vs_plain), 4),
        "mean_wer_alone_padded_vs_alone": round(
            statistics.mean(
                jiwer.wer(a, p) if a else float(bool(p)) for a, p in zip(alone, padded, strict=True)
            ),
            4,
        ),
        "decode_s": round(seconds, 1),
        "examples": bad[:40],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=17)
    parser.add_argument("--jobs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    engine = WhisperEngine(EngineConfig(model="tiny.en", cpu_threads=2))
    engine.set_packing(Packing(enabled=True))
    result = measure(engine, args.rounds, args.jobs, args.seed)
    result["machine"] = f"{platform.machine()}, {platform.processor() or 'cpu'}"
    summary = {k: v for k, v in result.items() if k != "examples"}
    print(json.dumps(summary, indent=1))
    for example in result["examples"][:15]:
        print(example)
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
