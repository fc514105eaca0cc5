"""Submitting a job and waiting for its end over HTTP, for every tier: ``client`` is an
httpx.Client on a real server or FastAPI's TestClient (which is one) on the app."""

from __future__ import annotations

import time
from collections.abc import Mapping

import httpx


def submit(
    client: httpx.Client,
    audio: bytes,
    name: str = "audio.wav",
    *,
    headers: Mapping[str, str] | None = None,
    **fields: str,
) -> dict:
    """POST /transcribe; the 202 body."""
    r = client.post("/transcribe", headers=headers, files={"file": (name, audio)}, data=fields)
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "queued"
    return dict(r.json())


def wait_done(
    client: httpx.Client,
    job_id: str,
    *,
    timeout: float,
    every: float,
    headers: Mapping[str, str] | None = None,
) -> dict:
    """Poll the job every ``every`` seconds until it is done or failed."""
    deadline = time.monotonic() + timeout
    body: dict = {}
    while time.monotonic() < deadline:
        body = client.get(f"/transcribe/{job_id}", headers=headers).json()
        if body["status"] in ("done", "error"):
            return body
        time.sleep(every)
    raise AssertionError(f"job {job_id} did not end in {timeout} s: {body}")
