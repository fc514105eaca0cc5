"""Where the torch engine's weights come from: a Hugging Face Whisper folder, or the
bundled CTranslate2 weights converted once (deployments/models.py finds them)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from deployments.engines.torch.engine import TorchWhisper
from deployments.engines.torch.weights import converted

if TYPE_CHECKING:
    from deployments.interface import EngineConfig


def is_hf_folder(path: Path) -> bool:
    return (
        (path / "config.json").is_file()
        and any((path / name).is_file() for name in ("model.safetensors", "pytorch_model.bin"))
    ) or (path / "model.safetensors.index.json").is_file()


def load_torch(config: EngineConfig, *, why: str) -> TorchWhisper:
    from deployments.models import resolve_model

    folder = Path(config.model)
    if not (folder.is_dir() and is_hf_folder(folder)):
        folder = converted(
            Path(resolve_model(config.model, cache_dir=config.cache_dir)), Path(config.cache_dir)
        )
    dtype = (
        config.compute_type if config.compute_type in ("float16", "bfloat16", "float32") else "auto"
    )
    return TorchWhisper(
        folder, device=config.device, dtype=dtype, threads=config.cpu_threads, why=why
    )
