"""What the unit tests share: the test key, settings, submitting and waiting, and fake
Transcribers (the fixtures are in tests/unit/conftest.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient

from deployments.protocol import End, TranscribeOptions
from serve_app.main import create_app
from serve_app.settings import Settings
from serve_app.store import open_store
from serve_app.transcriber_client import TranscriberClient
from tests import api_client
from tests.fakes import LocalClient

KEY = "test-key-123"
AUTH = {"Authorization": f"Bearer {KEY}"}
JFK = Path(__file__).parents[1] / "data" / "jfk.flac"


def make_settings(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "whisper_api_key": KEY,
        "allowed_origins": "https://app.example.com,http://localhost:3000",
        "data_dir": tmp_path,
        "max_file_size_mb": 2,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def make_app(settings: Settings, client: TranscriberClient) -> FastAPI:
    """The app over the job store its settings name, as the Gateway builds it."""
    return create_app(settings, client, open_store(settings.store_url))


def wait_done(client: TestClient, job_id: str, timeout: float = 10) -> dict:
    return api_client.wait_done(client, job_id, timeout=timeout, every=0.05, headers=AUTH)


def submit(client: TestClient, content: bytes, name: str = "a.flac") -> dict:
    return api_client.submit(client, content, name, headers=AUTH)


def uploads(tmp_path: Path) -> list[Path]:
    folder = tmp_path / "uploads"
    return list(folder.iterdir()) if folder.exists() else []


class Hanging(LocalClient):
    """An engine that never answers."""

    async def transcribe(self, *args: Any, **kw: Any) -> End:
        self.calls += 1
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


class Recording(LocalClient):
    """Remembers the options and the burst hint each job was sent with."""

    def __init__(self) -> None:
        super().__init__()
        self.options: list[dict[str, Any]] = []
        self.hints: list[bool] = []

    async def transcribe(
        self,
        audio: bytes,
        options: TranscribeOptions,
        owner: str = "",
        more_coming: bool = False,
        **kw: Any,
    ) -> End:
        self.options.append(options.model_dump(exclude_defaults=True))
        self.hints.append(more_coming)
        return await super().transcribe(audio, options, owner, more_coming, **kw)
