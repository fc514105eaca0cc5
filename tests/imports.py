"""Which heavy packages a module pulls in, asked of a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys


def loaded_by(modules: list[str], packages: tuple[str, ...]) -> list[str]:
    """Of ``packages``, those in ``sys.modules`` after importing ``modules`` (sorted)."""
    probe = (
        "import json, sys\n"
        f"import {', '.join(modules)}\n"
        f"print(json.dumps(sorted(m for m in {packages!r} if m in sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    return list(json.loads(out.stdout))
