"""Fixtures every tier may use."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.postgres import PostgresServer, PostgresUnavailable


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """The session's own PostgreSQL server (started on first use)."""
    try:
        server = PostgresServer()
        server.start()
    except PostgresUnavailable as exc:
        pytest.fail(str(exc))
    try:
        yield server
    finally:
        server.remove()
