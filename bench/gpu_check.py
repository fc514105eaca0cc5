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
import json
import platform
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

from deployments.engines import timing
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


def transcribe(engine: Any, clips: list[np.ndarray], beam_size: int = 5) -> list[dict[str, Any]]:
    """Each clip as one window, all in one batch: text, segments and word times."""
    tokenizer = WhisperTokenizer(
        load(engine.tokenizer_json),
        multilingual=engine.multilingual,
        language="en",
        task="transcribe",
    )
    encoded = engine.encode(clips)
    prompts = [tokenizer.prompt(None)] * len(clips)
    generated = engine.generate(encoded, prompts, beam_size=beam_size, max_length=448)
    out = []
    per_window = []
    for clip, result in zip(clips, generated, strict=True):
        segments, _reached = timing.split_by_timestamps(
            tokenizer, result.tokens, time_offset=0.0, duration=clip.size / SAMPLE_RATE
        )
        for s in segments:
            s["text"] = tokenizer.decode(s["tokens"])
        per_window.append(segments)
    texts = [[t for s in segs for t in s["tokens"] if t < tokenizer.eot] for segs in per_window]
    alignments = engine.align(
        encoded,
        list(range(len(clips))),
        tokenizer.sot_sequence,
        texts,
        [timing.frames(c.size / SAMPLE_RATE) for c in clips],
    )
    timing.add_words(per_window, tokenizer, alignments, [0.0] * len(clips))
    for segments in per_window:
        out.append(
            {
                "text": "".join(s["text"] for s in segments).strip(),
                "words": [(w["word"], w["start"], w["end"]) for s in segments for w in s["words"]],
            }
        )
    return out


def prepare() -> None:
    from faster_whisper import WhisperModel

    from deployments.audio import decode
    from deployments.engines.torch.engine import TorchWhisper
    from deployments.engines.torch.weights import converted, pack_int8
    from deployments.models import resolve_model

    ct2 = Path(resolve_model("tiny.en", cache_dir=ROOT / "data" / "models"))
    shutil.rmtree(CACHE, ignore_errors=True)
    pack_int8(converted(ct2, ROOT / "data" / "models"), WEIGHTS)
    clips = [decode(str(CLIPS / name)) for name in CLIP_FILES]
    np.savez(
        CACHE / "clips.npz",
        **{f"clip{i}": (c * 32767).astype(np.int16) for i, c in enumerate(clips)},
    )
    clips = load_clips()
    plain = WhisperModel(str(ct2), device="cpu", compute_type="int8")
    ct2_texts = []
    for clip in clips:
        segments, _info = plain.transcribe(
            clip, beam_size=5, temperature=0.0, condition_on_previous_text=False
        )
        ct2_texts.append("".join(s.text for s in segments).strip())
    engine = TorchWhisper(WEIGHTS, device="cpu", dtype="float32")
    torch_cpu = transcribe(engine, clips)
    reference = {
        "clips": CLIP_FILES,
        "ctranslate2_cpu_int8": ct2_texts,
        "torch_cpu_float32": [t["text"] for t in torch_cpu],
        "torch_cpu_words": [t["words"] for t in torch_cpu],
    }
    (CACHE / "reference.json").write_text(json.dumps(reference, indent=1))
    size = sum(p.stat().st_size for p in CACHE.rglob("*") if p.is_file())
    print(f"wrote {CACHE} ({size / 2**20:.1f} MiB)")
    for name, a, b in zip(CLIP_FILES, ct2_texts, reference["torch_cpu_float32"], strict=True):
        print(f"{name}: WER torch vs CTranslate2 on CPU {wer(a, b):.3f}")


def load_clips() -> list[np.ndarray]:
    with np.load(CACHE / "clips.npz") as data:
        return [data[f"clip{i}"].astype(np.float32) / 32767 for i in range(len(CLIP_FILES))]


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


def run(out_dir: Path, device: str = "cuda", windows_n: int = WINDOWS) -> None:
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
    clips = load_clips()
    start = time.perf_counter()
    engine = TorchWhisper(WEIGHTS, device=device, dtype=dtype)
    result["load_s"] = round(time.perf_counter() - start, 2)
    transcribe(engine, clips[:1])  # warm-up
    start = time.perf_counter()
    gpu = transcribe(engine, clips)
    result["transcribe_s"] = round(time.perf_counter() - start, 3)
    alone = [transcribe(engine, [clip])[0]["text"] for clip in clips]
    result["clips"] = [
        {
            "file": name,
            "seconds": round(clip.size / SAMPLE_RATE, 2),
            "text_gpu": g["text"],
            "same_alone_as_in_batch": g["text"] == a,
            "wer_vs_ctranslate2_cpu": round(wer(c, g["text"]), 4),
            "wer_vs_torch_cpu": round(wer(t, g["text"]), 4),
            "words_gpu": g["words"],
        }
        for name, clip, g, a, c, t in zip(
            CLIP_FILES,
            clips,
            gpu,
            alone,
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

    windows, speech = real_windows(clips, windows_n)
    tokenizer = WhisperTokenizer(
        load(engine.tokenizer_json), multilingual=False, language="en", task="transcribe"
    )

    def tiny_batch(batch: list[np.ndarray]) -> None:
        encoded = engine.encode(batch)
        engine.generate(encoded, [tokenizer.prompt(None)] * len(batch), beam_size=1, max_length=448)

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
    parser.add_argument("step", choices=["prepare", "run"])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--device", default="cuda", help="cpu: a dry run of `run` here")
    parser.add_argument("--windows", type=int, default=WINDOWS)
    args = parser.parse_args()
    if args.step == "prepare":
        prepare()
    else:
        run(args.out, args.device, args.windows)


if __name__ == "__main__":
    main()
