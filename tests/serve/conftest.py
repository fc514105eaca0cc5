"""One real server for the whole session: `serve run serve_config.yaml`, as a user starts it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).parents[2]
PORT = 8000
KEY = "serve-test-key-7f3a9c"
OTHER_KEY = "serve-test-other-key-52d1e8"
ORIGIN = "https://app.pilotys.example"
MAX_QUEUED_JOBS = 16


def _port_taken() -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", PORT)) == 0


class Server:
    """A `serve run` child process, its environment and its logs."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.url = f"http://127.0.0.1:{PORT}"
        self.output = workdir / "serve-run.log"
        self.ray_logs: list[Path] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")},
            "WHISPER_API_KEY": f"{KEY},{OTHER_KEY}",
            "ALLOWED_ORIGINS": ORIGIN,
            "DATA_DIR": str(workdir / "data"),
            "DB_PATH": str(workdir / "db" / "whisper-jobs.db"),
            "WHISPER_CPU_THREADS": "2",
            "MAX_QUEUED_JOBS": str(MAX_QUEUED_JOBS),
        }

    def start(self, timeout: float = 240) -> None:
        if _port_taken():
            pytest.fail(f"port {PORT} is taken: stop the server there before running these tests")
        serve_bin = Path(sys.executable).parent / "serve"
        out = self.output.open("ab")
        self.proc = subprocess.Popen(
            [str(serve_bin), "run", "serve_config.yaml"],
            cwd=ROOT,
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(
                    f"serve run exited ({self.proc.returncode}):\n{self.output.read_text()[-3000:]}"
                )
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    session = Path("/tmp/ray/session_latest").resolve()
                    self.ray_logs.append(session / "logs")
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        self.stop()
        pytest.fail(f"server not healthy after {timeout} s:\n{self.output.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        # A background `serve run` ignores SIGINT; SIGTERM shuts Serve and Ray down.
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        # Ray's proxy lets go of the port a moment after `serve run` exits.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and _port_taken():
            time.sleep(0.5)

    def kill(self) -> None:
        """SIGKILL the whole server: serve run, Ray and every replica, no cleanup."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and _port_taken():
            time.sleep(0.5)

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_files(self) -> list[Path]:
        files = [self.output]
        for logs in self.ray_logs:
            files += [p for p in logs.rglob("*") if p.is_file()]
        return files


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
    deadline = time.monotonic() + timeout
    body: dict = {}
    while time.monotonic() < deadline:
        body = client.get(f"/transcribe/{job_id}").json()
        if body["status"] in ("done", "error"):
            return body
        time.sleep(0.25)
    raise AssertionError(f"job {job_id} did not end in {timeout} s: {body}")


def submit(client: httpx.Client, audio: bytes, name: str = "audio.wav") -> str:
    r = client.post("/transcribe", files={"file": (name, audio)})
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "queued"
    return str(r.json()["job_id"])
