"""Fixtures of the unit tests (helpers: tests/unit/helpers.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from serve_app.main import create_app
from tests.fakes import LocalClient
from tests.unit.helpers import make_settings


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(tmp_path), LocalClient())) as c:
        yield c
