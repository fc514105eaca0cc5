"""Fixtures of the unit tests (helpers: tests/unit/helpers.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.fakes import LocalClient
from tests.unit.helpers import make_app, make_settings


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(make_app(make_settings(tmp_path), LocalClient())) as c:
        yield c
