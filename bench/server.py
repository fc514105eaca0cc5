"""A bench's own server: `serve run` of a checkout, on a free port, with a job store of its own."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from tests.serve.launcher import ROOT, ServeProcess, config_on_port, free_port


def bench_server(
    keys: str,
    env: dict[str, str] | None = None,
    *,
    root: Path = ROOT,
    port: int = 0,
    whisper: dict[str, Any] | None = None,
    prefix: str = "whisper-bench-",
) -> ServeProcess:
    """Not started: checkout ``root``'s serve_config.yaml on ``port`` (0: a free one), its
    work folder and DATA_DIR new, WHISPER_API_KEY ``keys``, ``env`` added, and ``whisper``
    merged into the Whisper deployment's user_config."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    port = port or free_port()
    return ServeProcess(
        work,
        {"WHISPER_API_KEY": keys, "DATA_DIR": str(work / "data"), **(env or {})},
        port=port,
        config=config_on_port(work, port, config=root / "serve_config.yaml", whisper=whisper),
        root=root,
    )
