"""One real server for the whole session: `serve run serve_config.yaml`, as a user starts it,
with packing short jobs turned on (off by default; this tier tests it through the real app)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests import api_client
from tests.serve.launcher import LaunchError, ServeProcess, config_on_port, free_port

PORT = free_port()
"""Not 8000: another server may hold it."""
KEY = "serve-test-key-7f3a9c"
OTHER_KEY = "serve-test-other-key-52d1e8"
ORIGIN = "https://app.pilotys.example"
MAX_QUEUED_JOBS = 16
MAX_UPLOADS_PER_KEY = 8
WEBHOOK_SECRET = "serve-test-whsec-91c4e0"


class Server(ServeProcess):
    """The session's server: the default config on a free port (packing on), with the test keys."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(
            workdir,
            {
                "WHISPER_API_KEY": f"{KEY},{OTHER_KEY}",
                "ALLOWED_ORIGINS": ORIGIN,
                "DATA_DIR": str(workdir / "data"),
                "DB_PATH": str(workdir / "db" / "whisper-jobs.db"),
                "WHISPER_CPU_THREADS": "2",
                "MAX_QUEUED_JOBS": str(MAX_QUEUED_JOBS),
                "WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
                "WEBHOOK_SECRET": WEBHOOK_SECRET,
                # As scripts/serve: Ray's own ports on loopback (docs/operations.md, "Ports").
                "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
                "MAX_UPLOADS_PER_KEY": str(MAX_UPLOADS_PER_KEY),
            },
            port=PORT,
            config=config_on_port(workdir, PORT, whisper={"pack_short_jobs": True}),
        )

    def start(self, timeout: float = 240) -> None:
        try:
            super().start(timeout)
        except LaunchError as exc:
            pytest.fail(str(exc))


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("serve"))
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60
    ) as c:
        yield c


def wait_done(client: httpx.Client, job_id: str, timeout: float = 180) -> dict:
    return api_client.wait_done(client, job_id, timeout=timeout, every=0.25)


def submit(client: httpx.Client, audio: bytes, name: str = "audio.wav", **fields: str) -> str:
    return str(api_client.submit(client, audio, name, **fields)["job_id"])
