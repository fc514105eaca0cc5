"""Another revision's checkout beside the working tree, for benches that compare the two."""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tests.serve.launcher import ROOT

SERVER_CODE = ("serve_app", "deployments", "serve_config.yaml")


def _git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(root), *args], capture_output=True, text=True, check=True
    ).stdout


@contextlib.contextmanager
def checkout(rev: str) -> Iterator[Path]:
    """A detached worktree of ``rev``, removed afterwards."""
    other = Path(tempfile.mkdtemp(prefix="whisper-bench-rev-")) / "checkout"
    _git(ROOT, "worktree", "add", "--detach", str(other), rev)
    try:
        yield other
    finally:
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(other)],
            capture_output=True,
        )


def revision(root: Path) -> str:
    """The checkout's commit, and "+changes" when its server code differs from it."""
    dirty = _git(root, "status", "--porcelain", "--", *SERVER_CODE).strip()
    return _git(root, "rev-parse", "--short", "HEAD").strip() + ("+changes" if dirty else "")
