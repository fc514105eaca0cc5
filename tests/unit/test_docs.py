"""The docs stay true to the tree: every relative link and every file path they name exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# A path in backticks under one of the project's folders, e.g. `serve_app/store/sql.py`.
PATH = re.compile(r"`((?:serve_app|deployments|tests|bench|configs|scripts|docs)/[\w./-]*[\w/])`")
LINK = re.compile(r"\]\(([^)#:]+)(?:#[^)]*)?\)")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_path_and_link_a_doc_names_exists(doc: Path) -> None:
    text = doc.read_text()
    # Caches the code makes (bench/.cache/...) are not in the tree.
    missing = [p for p in PATH.findall(text) if "/." not in p and not (ROOT / p).exists()]
    missing += [link for link in LINK.findall(text) if not (doc.parent / link).resolve().exists()]
    assert missing == [], f"{doc.name} names what is not there: {missing}"
