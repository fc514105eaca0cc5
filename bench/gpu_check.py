"""GPU check for a machine with an NVIDIA card: device, batched vs sequential, word error rate.

    .venv/bin/python -m bench.gpu_check        (under 10 minutes; prints, and writes
                                                bench/results/gpu-check.json)

CTranslate2's PyPI wheels load CUDA 12's cuBLAS (libcublas.so.12). On a machine with
only CUDA 13 that fails; this script says so plainly instead of a stack trace.
"""

from __future__ import annotations

import ctypes
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.clips import Clip, make_clips
from bench.run import RESULTS, run_engine, run_plain
from tests.audio_util import DATA, FOX_TEXT, JFK, JFK_TEXT


def device_info() -> dict[str, Any]:
    info: dict[str, Any] = {}
    if shutil.which("nvidia-smi"):
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
        )
        info["nvidia_smi"] = out.stdout.strip() or out.stderr.strip()
    import ctranslate2

    info["ctranslate2"] = ctranslate2.__version__
    try:
        info["cuda_devices"] = ctranslate2.get_cuda_device_count()
    except Exception as exc:
        info["cuda_devices"] = f"error: {exc}"
    for lib in ("libcublas.so.12", "libcublas.so.13", "libcudnn.so.9"):
        try:
            ctypes.CDLL(lib)
            info[lib] = "found"
        except OSError:
            info[lib] = "missing"
    return info


def clips_here() -> list[Clip]:
    """The benchmark's espeak clips where espeak-ng exists, else the repository's own audio."""
    if shutil.which("espeak-ng"):
        return make_clips(32)
    base = [
        Clip(JFK, JFK_TEXT, 11.0),
        Clip(DATA / "fox.wav", FOX_TEXT, 2.9),
        Clip(DATA / "sentinel.wav", "purple giraffes dance quietly tonight", 2.9),
    ]
    return [base[i % 3] for i in range(32)]


def main() -> None:
    result: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "device": device_info()}
    print(json.dumps(result["device"], indent=2))
    if not result["device"].get("cuda_devices"):
        result["verdict"] = "no CUDA device is visible here (nvidia-smi, ctranslate2)"
    elif result["device"].get("libcublas.so.12") != "found":
        result["verdict"] = (
            "CTranslate2 (faster-whisper) cannot use this GPU: its wheels need CUDA 12's "
            "libcublas.so.12, which this machine lacks. Install CUDA 12 runtime libraries "
            "(pip install nvidia-cublas-cu12 nvidia-cudnn-cu12 and add them to "
            "LD_LIBRARY_PATH) or use the torch engine when it lands."
        )
    clips = clips_here()
    audio = sum(c.seconds for c in clips)
    try:
        plain = run_plain(clips, 4, device="cuda", compute_type="float16")
        engine = run_engine(clips, 4, packing=True, batch=32, device="cuda")
        unpacked = run_engine(clips, 4, packing=False, batch=32, device="cuda", orders=1)
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
        result.setdefault("verdict", f"faster-whisper failed on CUDA: {result['error']}")
    else:
        result |= {
            "clips": len(clips),
            "audio_seconds": round(audio, 1),
            "plain_audio_s_per_s": round(audio / plain["wall_s"], 1),
            "engine_audio_s_per_s": round(audio / engine["wall_s"], 1),
            "engine_unpacked_audio_s_per_s": round(audio / unpacked["wall_s"], 1),
            "engine_vs_plain": round(plain["wall_s"] / engine["wall_s"], 2),
            "wer_plain": plain["wer"]["mean_per_clip"],
            "wer_engine": engine["wer"]["mean_per_clip"],
            "verdict": "ok",
        }
    RESULTS.mkdir(exist_ok=True)
    Path(RESULTS / "gpu-check.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "device"}, indent=2))


if __name__ == "__main__":
    main()
