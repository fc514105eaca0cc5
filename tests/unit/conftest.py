from __future__ import annotations

from types import SimpleNamespace

import pytest
from ray import serve


@pytest.fixture(autouse=True)
def replica_context(monkeypatch: pytest.MonkeyPatch) -> None:
    """@serve.batch reads the replica's max_ongoing_requests; outside Ray, give it one."""
    stub = SimpleNamespace(_deployment_config=SimpleNamespace(max_ongoing_requests=64))
    monkeypatch.setattr(serve, "get_replica_context", lambda: stub)
