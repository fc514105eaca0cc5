"""What the temperature fallback costs, by how a window's samples are drawn (no Ray, in-process)

    .venv/bin/python -m bench.fallback [--seeds 6 --out bench/results/fallback-sampler.json]

Windows that the bundled tiny.en fails at temperature 0 (the engine's guards send
them through temperatures 0.2 ... 1.0, best of 5 at each): every bench clip
(bench/clips.py, espeak-ng) and 4 s pieces of the real recordings (tests/data/real),
each also with white noise at 0 and -5 dB, those of them that fall back. Each is
transcribed by the engine (``run_batch`` of its one chunk) two ways:

- ``one``: as the engine does, one sampler (``backend.sampler()``) for all the
  window's temperatures, each drawing on from the last;
- ``fresh``: a fresh sampler at every temperature, each from the seed again (the
  engine before: on CTranslate2 a model copy per temperature).

with ``--seeds`` values of the samplers' seed each, and the process CPU time of
each transcription (encode and temperature 0 included, the same both ways), how
many temperatures it tried and how many sampled calls ran to the window's loop
budget (``deployments/engine.py``, LOOP_TOKENS_PER_SECOND).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.clips import make_clips
from bench.run import machine
from deployments.audio import decode
from deployments.engine import (
    LOOP_TOKENS,
    LOOP_TOKENS_PER_SECOND,
    MAX_LENGTH,
    WhisperEngine,
    token_budget,
)
from deployments.engines.contract import SAMPLE_RATE
from deployments.engines.ctranslate2 import engine as ct2_engine
from deployments.interface import EngineConfig
from deployments.protocol import TranscribeOptions
from tests.audio_util import DATA, wav_bytes

RESULTS = Path(__file__).parent / "results"
REAL = sorted((DATA / "real").iterdir())


class Counted:
    """The engine's backend, counting the sampled calls; ``fresh`` ignores the sampler
    it is given and draws from a new one at every call."""

    def __init__(self, backend: Any, *, fresh: bool) -> None:
        self.backend, self.fresh = backend, fresh
        self.samplers = 0
        self.sampled: list[int] = []
        """New tokens of each sampled call's kept decode."""

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backend, name)

    def sampler(self) -> Any:
        self.samplers += 1
        return self.backend.sampler()

    def generate(self, *args: Any, temperature: float = 0.0, **kw: Any) -> Any:
        if temperature > 0 and self.fresh:
            kw["sampler"] = self.backend.sampler()
        out = self.backend.generate(*args, temperature=temperature, **kw)
        if temperature > 0:
            self.sampled += [len(g.tokens) for g in out]
        return out


def windows(rng: np.random.Generator) -> list[tuple[str, np.ndarray]]:
    found = [(f"clip{i:02}", decode(str(c.path))) for i, c in enumerate(make_clips(32))]
    for path in REAL:
        audio = decode(str(path))
        for at in range(0, len(audio) - 2 * SAMPLE_RATE, 4 * SAMPLE_RATE):
            found.append((f"{path.stem}@{at // SAMPLE_RATE}s", audio[at : at + 4 * SAMPLE_RATE]))
    noisy = []
    for name, audio in found:
        power = float(np.mean(audio**2))
        for snr in (0, -5):
            noise = rng.normal(0, np.sqrt(power / 10 ** (snr / 10)), len(audio))
            noisy.append((f"{name}{snr:+d}dB", (audio + noise).astype(np.float32)))
    return found + noisy


def transcribe(engine: WhisperEngine, audio: np.ndarray) -> tuple[float, str]:
    prepared = engine.prepare(wav_bytes(audio), TranscribeOptions())
    begin = time.process_time()
    [result] = engine.run_batch(prepared.chunks)
    return time.process_time() - begin, "".join(s.text for s in result.segments)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "fallback-sampler.json")
    args = parser.parse_args()
    engine = WhisperEngine(EngineConfig(model="tiny.en", cpu_threads=args.threads))
    backend = engine.backend
    ways = {way: Counted(backend, fresh=way == "fresh") for way in ("one", "fresh")}
    candidates = windows(np.random.default_rng(7))
    falling: list[tuple[str, np.ndarray]] = []
    engine.backend = ways["one"]  # type: ignore[assignment]
    transcribe(engine, candidates[0][1])  # warm up
    for name, audio in candidates:
        before = ways["one"].samplers
        transcribe(engine, audio)
        if ways["one"].samplers > before:
            falling.append((name, audio))
    print(f"{len(falling)} of {len(candidates)} windows fall back", flush=True)
    rows = []
    for name, audio in falling:
        seconds = len(audio) / SAMPLE_RATE
        budget = min(MAX_LENGTH // 2, token_budget(seconds, LOOP_TOKENS_PER_SECOND, LOOP_TOKENS))
        for seed in range(args.seeds):
            ct2_engine.SAMPLING_SEED = seed  # the seed the backend's sampler() starts from
            for way, counted in ways.items():
                engine.backend = counted  # type: ignore[assignment]
                counted.sampled = []
                cpu, text = transcribe(engine, audio)
                rows.append(
                    {
                        "window": name,
                        "seed": seed,
                        "way": way,
                        "cpu_s": round(cpu, 3),
                        "temperatures": len(counted.sampled),
                        "at_budget": sum(n >= budget for n in counted.sampled),
                        "has_text": bool(text.strip()),
                    }
                )
        mine = {w: [r for r in rows if r["window"] == name and r["way"] == w] for w in ways}
        print(
            name,
            *(f"{w}: {statistics.mean(r['cpu_s'] for r in mine[w]):.2f} s" for w in ways),
            flush=True,
        )
    summary = {
        way: {
            key: round(statistics.mean(r[key] for r in rows if r["way"] == way), 3)
            for key in ("cpu_s", "temperatures", "at_budget")
        }
        for way in ways
    }

    def mean_cpu(name: str, way: str) -> float:
        return statistics.mean(r["cpu_s"] for r in rows if r["window"] == name and r["way"] == way)

    by_window = {
        name: round(mean_cpu(name, "fresh") / mean_cpu(name, "one"), 3) for name, _ in falling
    }
    out = {
        "machine": machine() | {"threads": args.threads},
        "date": time.strftime("%Y-%m-%d"),
        "windows": len(candidates),
        "falling_back": [name for name, _ in falling],
        "seeds": args.seeds,
        "summary": summary,
        "fresh_over_one_by_window": by_window,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
