"""Limits a trusted front end has, in the app: stalled and endless uploads, per-key caps.

The stall tests run the app under a real HTTP server (uvicorn, as Ray's proxy
does) and talk to it over raw sockets, as the attacks of issue 11 did.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from serve_app.auth import fingerprint
from tests.attacks import response, stalled_upload, submit_as
from tests.fakes import LocalClient
from tests.serve.launcher import free_port
from tests.unit.helpers import AUTH, JFK, KEY, Hanging, make_app, make_settings, submit, uploads

OTHER_KEY = "other-key-456"
TWO_KEYS = f"{KEY},{OTHER_KEY}"


@pytest.fixture
def serve() -> Iterator[object]:
    """serve(app) runs ``app`` under uvicorn on a free loopback port and returns the port."""
    servers: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(app: FastAPI) -> int:
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        servers.append((server, thread))
        return port

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(timeout=10)


def test_a_stalled_upload_is_cut_off_with_408_and_leaves_nothing(
    serve: object, tmp_path: Path
) -> None:
    """Issue 11: uploads that declared 1000 bytes and stopped after 150 were held for good."""
    app = make_app(make_settings(tmp_path, upload_idle_timeout_s=0.5), LocalClient())
    port = serve(app)  # type: ignore[operator]
    started = time.monotonic()
    with stalled_upload(port, KEY) as sock:
        code, _headers, body = response(sock)
    assert code == 408, body
    assert "UPLOAD_IDLE_TIMEOUT_S" in body["detail"]
    assert time.monotonic() - started < 5
    assert uploads(tmp_path) == []


def test_a_trickling_upload_is_cut_off_at_the_upload_timeout(serve: object, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, upload_idle_timeout_s=5, upload_timeout_s=1)
    port = serve(make_app(settings, LocalClient()))  # type: ignore[operator]
    with stalled_upload(port, KEY, declared=100_000, sent=100) as sock:
        sock.settimeout(0.2)
        code = 0
        for _ in range(40):  # a byte every 0.2 s: never idle, never done
            try:
                code, _headers, body = response(sock)
                break
            except TimeoutError:
                sock.sendall(b"\0")
    assert code == 408, code
    assert "UPLOAD_TIMEOUT_S" in body["detail"]


def test_one_key_with_stalled_uploads_gets_429_and_other_keys_are_served(
    serve: object, tmp_path: Path
) -> None:
    """Issue 11: 520 stalled uploads of one key blocked every client for 140 s."""
    settings = make_settings(tmp_path, whisper_api_key=TWO_KEYS, max_uploads_per_key=2)
    app = make_app(settings, LocalClient())
    port = serve(app)  # type: ignore[operator]
    stalled = [stalled_upload(port, KEY) for _ in range(2)]
    try:
        deadline = time.monotonic() + 5
        while app.state.runner.uploads_in_progress(fingerprint(KEY)) < 2:
            assert time.monotonic() < deadline, "the stalled uploads never started"
            time.sleep(0.02)
        with stalled_upload(port, KEY, declared=10, sent=10) as third:
            code, headers, body = response(third)
        assert code == 429, body
        assert "MAX_UPLOADS_PER_KEY" in body["detail"] and int(headers["retry-after"]) > 0
        url = f"http://127.0.0.1:{port}"
        other = submit_as(url, OTHER_KEY, timeout=10)
        assert other.status_code == 202, other.text
        assert httpx.get(f"{url}/health", timeout=5).status_code == 200
    finally:
        for sock in stalled:
            sock.close()


def test_a_chunked_body_is_cut_at_the_limit_whatever_part_carries_it(tmp_path: Path) -> None:
    """Issue 11: the 25 MB limit covered the file part only; 480 MB came in around it."""

    def body() -> Iterator[bytes]:
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.flac"\r\n\r\n'
        yield JFK.read_bytes()
        yield b"\r\n--b--\r\n"
        for _ in range(50):  # 3.3 MB after the last boundary, over the 2 MB limit
            yield b"\0" * 65536

    with TestClient(make_app(make_settings(tmp_path), LocalClient())) as client:
        r = client.post(
            "/transcribe",
            headers={**AUTH, "Content-Type": "multipart/form-data; boundary=b"},
            content=body(),
        )
    assert r.status_code == 413, r.text
    assert "request body is over" in r.json()["detail"]
    assert uploads(tmp_path) == []


def test_jobs_per_key_are_capped_with_429_and_other_keys_go_on(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, whisper_api_key=TWO_KEYS, max_jobs_per_key=2)
    with TestClient(make_app(settings, Hanging())) as c:
        submit(c, JFK.read_bytes())
        submit(c, JFK.read_bytes())
        r = c.post("/transcribe", headers=AUTH, files={"file": ("a.flac", JFK.read_bytes())})
        assert r.status_code == 429, r.text
        assert "MAX_JOBS_PER_KEY" in r.json()["detail"] and int(r.headers["retry-after"]) > 0
        other = c.post(
            "/transcribe",
            headers={"Authorization": f"Bearer {OTHER_KEY}"},
            files={"file": ("a.flac", JFK.read_bytes())},
        )
        assert other.status_code == 202, other.text
        assert len(uploads(tmp_path)) == 3


def test_queued_audio_per_key_is_capped_with_429(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, max_queued_audio_s_per_key=15)
    with TestClient(make_app(settings, Hanging())) as c:
        submit(c, JFK.read_bytes())  # 11 s
        r = c.post("/transcribe", headers=AUTH, files={"file": ("a.flac", JFK.read_bytes())})
        assert r.status_code == 429, r.text
        assert "MAX_QUEUED_AUDIO_S_PER_KEY" in r.json()["detail"]
        assert len(uploads(tmp_path)) == 1
