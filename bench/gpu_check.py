"""GPU check of the torch engine, on a machine with torch and transformers and nothing else.

    .venv/bin/python -m bench.gpu_check prepare   # here, on CPU: writes bench/.cache/gpu (~42 MB)
    python -m bench.gpu_check run [--out DIR]      # on the GPU machine, bench/.cache/gpu beside it

``prepare`` (needs the project's venv: faster-whisper, PyAV) writes what ``run`` needs,
so ``run`` imports only torch, transformers, tokenizers, safetensors and numpy:
  - tiny.en as int8 rows with a scale each, dequantized at load (40 MB; float16 is 75 MB);
  - jfk and the real-speech clips (tests/data) as 16 kHz int16;
  - their CPU transcripts: CTranslate2 (faster-whisper int8, beam 5, the server's CPU
    path) and this torch engine on CPU (float32, the same int8-rounded weights).
``run`` reports the GPU, driver and versions; the clips transcribed on the GPU (beam 5,
timestamps, word times) with WER against both CPU transcripts; throughput in audio
seconds per second for batches of 1, 8, 32 and 64 windows (greedy, timestamp rules)
against one at a time, on the real tiny.en weights and on randomly initialized
large-v3-turbo-shaped weights (fixed decode length, no text: a speed measure only);
peak GPU memory. It writes gpu-check.json into --out (default bench/results).
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import io
import json
import platform
import random
import re
import shutil
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

from deployments.engines.contract import SAMPLE_RATE
from deployments.engines.tokenizer import WhisperTokenizer, load

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "bench" / ".cache" / "gpu"
WEIGHTS = CACHE / "tiny.en-int8"
CLIPS = ROOT / "tests" / "data"
CLIP_FILES = [
    "jfk.flac",
    "real/2412-153948-0000.flac",
    "real/1088-134315-0000.wav",
    "real/1088-134315-0000-reverb.wav",
    "real/LJ002-0020.wav",
]
BATCHES = (1, 8, 32, 64)
ROUNDS = 17
JOBS_PER_ROUND = 30
"""As bench/packing.py (same seed, so the same draws as its CPU figures)."""
PIPELINE_JOBS = 120
PIPELINE_BATCHES = (1, 8, 32, 120)
PARTS = ("packing", "pipeline", "engine")
"""After the whole clips: packed rounds, the pipeline's throughput, the engine's alone."""
WINDOWS = 64
WINDOW_FILL_S = 28.0
FIXED_STEPS = 64
# large-v3-turbo: the large-v3 encoder with 4 decoder layers.
TURBO = {
    "vocab_size": 51866,
    "num_mel_bins": 128,
    "d_model": 1280,
    "encoder_layers": 32,
    "decoder_layers": 4,
    "encoder_attention_heads": 20,
    "decoder_attention_heads": 20,
    "encoder_ffn_dim": 5120,
    "decoder_ffn_dim": 5120,
    "max_source_positions": 1500,
    "max_target_positions": 448,
}


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split()


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate (Levenshtein over words), as jiwer computes it."""
    ref, hyp = words(reference), words(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1] / max(1, len(ref))


@functools.cache
def tokenizer_of(backend: Any) -> WhisperTokenizer:
    """Once per engine: loading tokenizer.json takes ~0.1 s (it was, per job, most of the
    first GPU run's pipeline time)."""
    return WhisperTokenizer(
        load(backend.tokenizer_json), multilingual=False, language="en", task="transcribe"
    )


def pipeline(backend: Any) -> Any:
    """The server's pipeline (deployments/engine.py) over ``backend``, packing on."""
    from deployments.engine import WhisperEngine
    from deployments.interface import EngineConfig, Packing

    engine = WhisperEngine(EngineConfig(model="tiny.en"), backend=backend)
    engine.set_packing(Packing(enabled=True))
    return engine


def chunk(engine: Any, samples: np.ndarray, *, words: bool = False, packable: bool = True) -> Any:
    """One short job's only chunk, as ``WhisperEngine.prepare`` makes it (VAD already applied)."""
    from deployments.interface import Chunk

    return Chunk(
        audio=samples,
        offset=0.0,
        duration=samples.size / SAMPLE_RATE,
        prompt=tokenizer_of(engine.backend).prompt(None),
        language="en",
        task="transcribe",
        beam_size=5,
        pack_key="one-key",
        packable=packable,
        word_timestamps=words,
    )


def transcribe(engine: Any, clips: list[np.ndarray], **how: bool) -> list[dict[str, Any]]:
    """Each clip a job of one chunk, all in one ``run_batch``: text and word times."""
    results = engine.run_batch([chunk(engine, c, **how) for c in clips])
    out = []
    for result in results:
        assert result.error is None, result.error
        segments = result.segments
        out.append(
            {
                "text": "".join(s.text for s in segments).strip(),
                "words": [
                    (w.word, round(w.start, 2), round(w.end, 2))
                    for s in segments
                    for w in s.words or []
                ],
            }
        )
    return out


def alone(engine: Any, clips: list[np.ndarray], **how: bool) -> list[dict[str, Any]]:
    """Each clip in a batch of its own, never packed."""
    return [transcribe(engine, [c], packable=False, **how)[0] for c in clips]


def prepare() -> None:
    from faster_whisper import WhisperModel

    from deployments.audio import cut, decode
    from deployments.engines.ctranslate2.engine import CTranslate2Whisper
    from deployments.engines.torch.engine import TorchWhisper
    from deployments.engines.torch.weights import converted, pack_int8
    from deployments.interface import EngineConfig
    from deployments.models import resolve_model
    from tests.audio_util import real_clips, wav_bytes

    ct2 = Path(resolve_model("tiny.en", cache_dir=ROOT / "data" / "models"))
    shutil.rmtree(CACHE, ignore_errors=True)
    pack_int8(converted(ct2, ROOT / "data" / "models"), WEIGHTS)
    full = [decode(str(CLIPS / name)) for name in CLIP_FILES]
    cuts = real_clips()
    # The cuts as the server's VAD leaves them (each one chunk).
    speech = []
    for _name, samples in cuts:
        _layout, windows = cut(io.BytesIO(wav_bytes(samples)))
        assert len(windows) == 1
        speech.append(windows[0].read())
    np.savez(
        CACHE / "clips.npz",
        **{f"clip{i}": (c * 32767).astype(np.int16) for i, c in enumerate(full)},
        **{f"cut{i}": (c * 32767).astype(np.int16) for i, c in enumerate(speech)},
    )
    full, speech = load_clips()
    plain = WhisperModel(str(ct2), device="cpu", compute_type="int8")
    plain_texts = []
    for clip in full:
        segments, _info = plain.transcribe(
            clip, beam_size=5, temperature=0.0, condition_on_previous_text=False
        )
        plain_texts.append("".join(s.text for s in segments).strip())
    config = EngineConfig(model="tiny.en", cache_dir=str(ROOT / "data" / "models"), cpu_threads=2)
    ct2_engine = pipeline(CTranslate2Whisper(config, why="reference"))
    torch_engine = pipeline(TorchWhisper(WEIGHTS, device="cpu", dtype="float32"))
    reference = {
        "clips": CLIP_FILES,
        "cuts": [name for name, _samples in cuts],
        "faster_whisper_cpu_int8": plain_texts,
        "ctranslate2_cpu_int8": [t["text"] for t in alone(ct2_engine, full)],
        "torch_cpu_float32": alone(torch_engine, full, words=True),
        "cuts_ctranslate2_cpu_int8": [t["text"] for t in alone(ct2_engine, speech)],
        "cuts_torch_cpu_float32": [t["text"] for t in alone(torch_engine, speech)],
    }
    (CACHE / "reference.json").write_text(json.dumps(reference, indent=1))
    size = sum(p.stat().st_size for p in CACHE.rglob("*") if p.is_file())
    print(f"wrote {CACHE} ({size / 2**20:.1f} MiB)")
    for name, a, b in zip(
        CLIP_FILES, reference["ctranslate2_cpu_int8"], reference["torch_cpu_float32"], strict=True
    ):
        print(f"{name}: WER torch vs CTranslate2 on CPU {wer(a, b['text']):.3f}")


def load_clips() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The whole clips and the cuts (speech only), as float32."""
    with np.load(CACHE / "clips.npz") as data:
        full = [data[f"clip{i}"].astype(np.float32) / 32767 for i in range(len(CLIP_FILES))]
        cuts = [
            data[k].astype(np.float32) / 32767
            for k in sorted(
                (k for k in data.files if k.startswith("cut")), key=lambda k: int(k[3:])
            )
        ]
    return full, cuts


def device_info() -> dict[str, Any]:
    import torch
    import transformers

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "cuda_available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    if shutil.which("nvidia-smi"):
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=False,
        )
        info["nvidia_smi"] = out.stdout.strip() or out.stderr.strip()
    try:
        import ctranslate2

        info["ctranslate2"] = ctranslate2.__version__
    except ImportError:
        info["ctranslate2"] = "not installed"
    for lib in ("libcublas.so.12", "libcublas.so.13"):
        try:
            ctypes.CDLL(lib)
            info[lib] = "found"
        except OSError:
            info[lib] = "missing"
    return info


def word_shift(
    gpu: list[tuple[str, float, float]], cpu: list[tuple[str, float, float]]
) -> float | None:
    """Largest start/end difference of the same words; None when the words differ."""
    if [w[0] for w in gpu] != [w[0] for w in cpu] or not gpu:
        return None
    return round(
        max(max(abs(a[1] - b[1]), abs(a[2] - b[2])) for a, b in zip(gpu, cpu, strict=True)), 3
    )


def packing(engine: Any, cuts: list[np.ndarray], reference: dict[str, Any], rounds: int) -> Any:
    """bench/packing.py's rounds on this device: packed jobs against the same clips alone."""
    solo = [t["text"] for t in alone(engine, cuts)]
    rng = random.Random(0)
    engine.decoded_alone = 0
    draws: list[list[int]] = []
    texts: list[list[str]] = []
    start = time.perf_counter()
    for _ in range(rounds):
        picks = [rng.randrange(len(cuts)) for _ in range(JOBS_PER_ROUND)]
        draws.append(picks)
        texts.append([t["text"] for t in transcribe(engine, [cuts[i] for i in picks])])
    seconds = time.perf_counter() - start
    again = [t["text"] for t in transcribe(engine, [cuts[i] for i in draws[0]])]
    per_job = [
        wer(solo[i], text) if words(solo[i]) else float(bool(words(text)))
        for picks, round_texts in zip(draws, texts, strict=True)
        for i, text in zip(picks, round_texts, strict=True)
    ]
    out = {
        "cuts": reference["cuts"],
        "alone_gpu": solo,
        "mean_wer_alone_gpu_vs_torch_cpu": round(
            statistics.mean(
                wer(c, g) for c, g in zip(reference["cuts_torch_cpu_float32"], solo, strict=True)
            ),
            4,
        ),
        "mean_wer_alone_gpu_vs_ctranslate2_cpu": round(
            statistics.mean(
                wer(c, g) for c, g in zip(reference["cuts_ctranslate2_cpu_int8"], solo, strict=True)
            ),
            4,
        ),
        "jobs": len(per_job),
        "changed_vs_alone": sum(w > 0 for w in per_job),
        "mean_wer_packed_vs_alone": round(statistics.mean(per_job), 4),
        "decoded_alone_by_guard": engine.decoded_alone,
        "round_repeated_same_text": again == texts[0],
        "decode_s": round(seconds, 2),
        "draws": draws,
        "texts": texts,
    }
    print(
        f"packing: {out['jobs']} jobs, WER packed vs alone {out['mean_wer_packed_vs_alone']}, "
        f"{out['changed_vs_alone']} changed, repeat same: {out['round_repeated_same_text']}",
        flush=True,
    )
    return out


def pipeline_throughput(
    engine: Any, cuts: list[np.ndarray], device: str, jobs: int = PIPELINE_JOBS
) -> dict[str, Any]:
    """Short jobs of real speech through ``run_batch`` (beam 5, guards), packed and not."""
    import torch

    rng = random.Random(1)
    picks = [rng.randrange(len(cuts)) for _ in range(jobs)]
    speech = sum(cuts[i].size for i in picks) / SAMPLE_RATE
    transcribe(engine, [cuts[i] for i in picks[:8]])  # warm-up
    rows: dict[str, Any] = {}
    for packed in (False, True):
        for size in [b for b in PIPELINE_BATCHES if b < len(picks)] + [len(picks)]:
            if (packed and size == 1) or f"{'packed' if packed else 'unpacked'}_{size}" in rows:
                continue
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for i in range(0, len(picks), size):
                batch = [chunk(engine, cuts[j], packable=packed) for j in picks[i : i + size]]
                engine.run_batch(batch)
            if device == "cuda":
                torch.cuda.synchronize()
            wall = time.perf_counter() - start
            name = f"{'packed' if packed else 'unpacked'}_{size}"
            rows[name] = {"wall_s": round(wall, 3), "audio_s_per_s": round(speech / wall, 1)}
            print(f"  {name:>13}: {speech / wall:8.1f} audio s/s, {wall:.2f} s", flush=True)
    one = rows["unpacked_1"]["wall_s"]
    for row in rows.values():
        row["vs_one_at_a_time"] = round(one / row["wall_s"], 2)
    return {
        "jobs": len(picks),
        "speech_s": round(speech, 1),
        "decode": "the server's pipeline: beam 5, temperature fallback, no word times",
        "batches": rows,
    }


def report(path: Path) -> None:
    """Judge the packed jobs of a run (tests/audio_util.py ``judge``: needs jiwer, run here)."""
    from tests.audio_util import judge
    from tests.audio_util import words as plain_words

    result = json.loads(path.read_text())
    packed = result["packing"]
    solo = [plain_words(t) for t in packed["alone_gpu"]]
    counts = {"foreign": 0, "empty": 0, "lost_edge": 0}
    examples = []
    for picks, texts in zip(packed["draws"], packed["texts"], strict=True):
        for i, text in zip(picks, texts, strict=True):
            others = [solo[j] for j in set(picks) if solo[j] != solo[i]]
            verdict = judge(plain_words(text), solo[i], others)
            for name, hit in verdict.items():
                counts[name] += hit
            if any(verdict.values()):
                examples.append({"cut": packed["cuts"][i], "alone": solo[i], "packed": text})
    packed.update(counts)
    packed["judged_examples"] = examples
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in packed.items() if k not in ("draws", "texts")}, indent=1))


def real_windows(clips: list[np.ndarray], count: int) -> tuple[list[np.ndarray], float]:
    """``count`` windows of real speech, clips laid end to end with 1 s gaps (as packing does)."""
    gap = np.zeros(SAMPLE_RATE, dtype=np.float32)
    windows: list[np.ndarray] = []
    speech = 0.0
    k = 0
    while len(windows) < count:
        parts: list[np.ndarray] = []
        length = 0.0
        while True:
            clip = clips[k % len(clips)]
            seconds = clip.size / SAMPLE_RATE
            if parts and length + 1.0 + seconds > WINDOW_FILL_S:
                break
            parts += [gap, clip] if parts else [clip]
            length += seconds + (1.0 if len(parts) > 1 else 0.0)
            speech += seconds
            k += 1
        windows.append(np.concatenate(parts))
    return windows, speech


def throughput(run_batch: Any, windows: list[np.ndarray], audio_s: float) -> dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available()
    run_batch(windows[:2])  # warm up kernels and allocator
    rows = {}
    for size in [b for b in BATCHES if b <= len(windows)]:
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        for i in range(0, len(windows), size):
            run_batch(windows[i : i + size])
        if cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - start
        rows[str(size)] = {
            "wall_s": round(wall, 3),
            "audio_s_per_s": round(audio_s / wall, 1),
            "peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20) if cuda else None,
        }
        print(f"  batch {size:>2}: {audio_s / wall:8.1f} audio s/s, {wall:.2f} s", flush=True)
    one = rows["1"]["wall_s"]
    for row in rows.values():
        row["vs_one_at_a_time"] = round(one / row["wall_s"], 2)
    return rows


def run(
    out_dir: Path,
    device: str = "cuda",
    windows_n: int = WINDOWS,
    rounds: int = ROUNDS,
    jobs: int = PIPELINE_JOBS,
    parts: tuple[str, ...] = PARTS,
) -> None:
    """The check; ``device="cpu"`` with a few windows is its dry run on a machine without a GPU."""
    import torch
    from transformers import WhisperConfig, WhisperForConditionalGeneration
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache

    from deployments.engines.torch.engine import TorchWhisper

    result: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "device": device_info()}
    print(json.dumps(result["device"], indent=1), flush=True)
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device visible to torch")
    dtype = "float16" if device == "cuda" else "float32"
    reference = json.loads((CACHE / "reference.json").read_text())
    clips, cuts = load_clips()
    start = time.perf_counter()
    backend = TorchWhisper(WEIGHTS, device=device, dtype=dtype)
    engine = pipeline(backend)
    result["load_s"] = round(time.perf_counter() - start, 2)
    transcribe(engine, clips[:2], words=True, packable=False)  # warm-up, word times too
    start = time.perf_counter()
    gpu = transcribe(engine, clips, words=True, packable=False)
    result["transcribe_s"] = round(time.perf_counter() - start, 3)
    solo = alone(engine, clips, words=True)
    result["clips"] = [
        {
            "file": name,
            "seconds": round(clip.size / SAMPLE_RATE, 2),
            "text_gpu": g["text"],
            "same_alone_as_in_batch": g["text"] == a["text"],
            "wer_vs_faster_whisper_cpu": round(wer(f, g["text"]), 4),
            "wer_vs_ctranslate2_cpu": round(wer(c, g["text"]), 4),
            "wer_vs_torch_cpu": round(wer(t["text"], g["text"]), 4),
            "words_gpu": g["words"],
            "max_word_shift_vs_torch_cpu_s": word_shift(g["words"], t["words"]),
        }
        for name, clip, g, a, f, c, t in zip(
            CLIP_FILES,
            clips,
            gpu,
            solo,
            reference["faster_whisper_cpu_int8"],
            reference["ctranslate2_cpu_int8"],
            reference["torch_cpu_float32"],
            strict=True,
        )
    ]
    result["jfk_word_for_word_vs_ctranslate2_cpu"] = words(gpu[0]["text"]) == words(
        reference["ctranslate2_cpu_int8"][0]
    )
    for clip in result["clips"]:
        print(
            f"{clip['file']}: {clip['text_gpu']!r} WER vs CT2 CPU {clip['wer_vs_ctranslate2_cpu']}",
            flush=True,
        )
    save(result, out_dir)

    if "packing" in parts:
        result["packing"] = packing(engine, cuts, reference, rounds)
        save(result, out_dir)
    if "pipeline" in parts:
        result["pipeline_throughput"] = pipeline_throughput(engine, cuts, device, jobs)
        save(result, out_dir)
    if "engine" not in parts:
        return

    windows, speech = real_windows(clips, windows_n)
    tokenizer = tokenizer_of(backend)

    def tiny_batch(batch: list[np.ndarray]) -> None:
        encoded = backend.encode(batch)
        backend.generate(
            encoded, [tokenizer.prompt(None)] * len(batch), beam_size=1, max_length=448
        )

    print(f"tiny.en {dtype}, {len(windows)} windows of real speech ({speech:.0f} s), greedy:")
    result["throughput_tiny_en"] = {
        "weights": f"tiny.en (bundled), int8 rows dequantized to {dtype}",
        "decode": "greedy with Whisper's timestamp rules, until the end token",
        "windows": len(windows),
        "speech_s": round(speech, 1),
        "batches": throughput(tiny_batch, windows, speech),
    }
    save(result, out_dir)
    if device == "cuda":
        torch.cuda.empty_cache()

    config = WhisperConfig(**TURBO)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        model = WhisperForConditionalGeneration(config)
    turbo = TorchWhisper(WEIGHTS, device=device, dtype=dtype, model=model)
    prompt = [50258, 50259, 50360]  # <|startoftranscript|><|en|><|transcribe|>

    def turbo_batch(batch: list[np.ndarray]) -> None:
        encoded = turbo.encode(batch)
        cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        tokens = torch.tensor([prompt] * len(batch), device=device)
        logits = turbo.decoder_step(tokens, encoded.hidden, cache)
        for _ in range(FIXED_STEPS):
            tokens = logits[:, -1].argmax(dim=-1, keepdim=True)
            logits = turbo.decoder_step(tokens, encoded.hidden, cache)

    print(f"large-v3-turbo shape, random {dtype} weights, {FIXED_STEPS} tokens a window:")
    result["throughput_large_v3_turbo_shape"] = {
        "weights": "random (large-v3-turbo shape: 32 encoder, 4 decoder layers, d_model 1280, "
        f"128 mels), {dtype}; a speed measure, no text",
        "decode": f"greedy, fixed length: {FIXED_STEPS} tokens per window after a 3-token prompt",
        "windows": len(windows),
        "speech_s": round(speech, 1),
        "parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6),
        "batches": throughput(turbo_batch, windows, speech),
    }
    if device == "cuda":
        result["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
    save(result, out_dir)


def save(result: dict[str, Any], out_dir: Path) -> None:
    """Write what is measured so far (a later part that fails keeps the earlier ones)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "gpu-check.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out_dir / 'gpu-check.json'}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=["prepare", "run", "report"])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--device", default="cuda", help="cpu: a dry run of `run` here")
    parser.add_argument("--windows", type=int, default=WINDOWS)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--jobs", type=int, default=PIPELINE_JOBS)
    parser.add_argument("--parts", default=",".join(PARTS), help="which of: " + ", ".join(PARTS))
    args = parser.parse_args()
    if args.step == "prepare":
        prepare()
    elif args.step == "report":
        report(args.out / "gpu-check.json")
    else:
        parts = tuple(args.parts.split(","))
        run(args.out, args.device, args.windows, args.rounds, args.jobs, parts)


if __name__ == "__main__":
    main()
