"""Which engine runs a Whisper replica: ``WHISPER_ENGINE=auto|ctranslate2|torch``.

An engine's package is imported here only once it is chosen, on the replica;
the gateway and the app builder never import one.
auto: CTranslate2 (faster-whisper) on CPU, and on CUDA where its wheel can use
the GPU (it loads CUDA 12's cuBLAS); torch where it cannot.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from typing import TYPE_CHECKING

from deployments.engines.contract import WhisperBackend

if TYPE_CHECKING:
    from deployments.interface import EngineConfig

logger = logging.getLogger("ray.serve.whisper.engine")

ENGINES = ("ctranslate2", "torch")


def choose(engine: str, device: str) -> tuple[str, str]:
    """The engine to load for ``engine`` (a setting) on ``device``, and why."""
    if engine in ENGINES:
        return engine, f"WHISPER_ENGINE={engine}"
    if engine != "auto":
        raise ValueError(f"WHISPER_ENGINE={engine!r}: use auto, ctranslate2 or torch")
    if device == "cpu":
        return "ctranslate2", "auto: CTranslate2 on CPU (int8)"
    problem = ctranslate2_cuda_problem()
    if problem is None:
        return "ctranslate2", "auto: CTranslate2 can use this GPU"
    return "torch", f"auto: {problem}"


def ctranslate2_cuda_problem() -> str | None:
    """Why CTranslate2 cannot decode on this machine's GPU, or None when it can."""
    try:
        import ctranslate2
    except ImportError:
        return "CTranslate2 is not installed"
    try:
        ctypes.CDLL("libcublas.so.12")
    except OSError:
        return "CTranslate2's wheel needs CUDA 12's libcublas.so.12, which is missing here"
    try:
        count = int(ctranslate2.get_cuda_device_count())
    except Exception as exc:
        return f"CTranslate2 sees no GPU ({type(exc).__name__})"
    return None if count > 0 else "CTranslate2 sees no GPU"


def load(config: EngineConfig) -> WhisperBackend:
    """Load the configured engine on this replica; the log says which, on what, and why."""
    name, why = choose(config.engine, config.device)
    if config.device == "cpu":
        _openmp_threads(config.threads, runtime=name)
    backend: WhisperBackend
    if name == "ctranslate2":
        from deployments.engines.ctranslate2.engine import CTranslate2Whisper

        backend = CTranslate2Whisper(config, why=why)
    else:
        from deployments.engines.torch.loader import load_torch

        backend = load_torch(config, why=why)
    loaded = backend.loaded
    logger.info(
        "engine %s on %s (%s): %s; model %s",
        loaded.engine,
        loaded.device,
        loaded.dtype,
        loaded.why,
        config.model,
    )
    return backend


def _openmp_threads(threads: int, runtime: str) -> None:
    """Give OpenMP the engine's thread count before ``runtime`` (the engine's package,
    named as the engine) loads it.

    Ray starts a replica with OMP_NUM_THREADS=1 (num_cpus below 2), and
    CTranslate2's OpenMP runtime (its own libgomp) reads it once, when it loads:
    its worker threads then used one core for parts of a decode whatever
    intra_threads said (one clip's temperature fallback took 5.1 s against
    4.3-4.6 s on 2 cores, the same hour).
    """
    wanted = str(threads)
    current = os.environ.get("OMP_NUM_THREADS")
    if current == wanted or (current is None and threads == len(os.sched_getaffinity(0))):
        return  # unset, OpenMP takes every core this process may run on
    if runtime in sys.modules:
        logger.warning(
            "OMP_NUM_THREADS=%s, not %s: %s was loaded before the engine",
            current,
            wanted,
            runtime,
        )
        return
    os.environ["OMP_NUM_THREADS"] = wanted
