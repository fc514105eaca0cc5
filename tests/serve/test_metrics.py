"""The custom metrics reach Ray's Prometheus endpoint (what the dashboard and Prometheus read)."""

from __future__ import annotations

import json
import re
import time

import httpx
import pytest

from tests.audio_util import JFK
from tests.serve.conftest import Server, submit, wait_done

pytestmark = pytest.mark.serve

WANTED = [
    r"ray_whisper_jobs_submitted_total\{[^}]*\} [1-9]",
    r'ray_whisper_jobs_finished_total\{[^}]*status="done"[^}]*\} [1-9]',
    r"ray_whisper_queue_depth\{",
    r"ray_whisper_job_latency_seconds_bucket\{",
    r"ray_whisper_audio_seconds_total\{[^}]*\} [1-9]",
    r"ray_whisper_real_time_factor_bucket\{",
    r"ray_whisper_batch_chunks_bucket\{",
    r"ray_whisper_batch_windows_bucket\{",
    r"ray_whisper_packing_fill_bucket\{",
]


def scrape(server: Server) -> str:
    """Every Prometheus target of the server's Ray session, as Prometheus would find them."""
    session = server.ray_logs[-1].parent
    targets = json.loads((session / "prom_metrics_service_discovery.json").read_text())
    text = ""
    for group in targets:
        for target in group["targets"]:
            try:
                text += httpx.get(f"http://{target}/metrics", timeout=5).text
            except httpx.HTTPError:
                continue
    return text


def test_job_and_batch_metrics_are_exported(server: Server, client: httpx.Client) -> None:
    assert wait_done(client, submit(client, JFK.read_bytes(), "jfk.flac"))["status"] == "done"
    missing = WANTED
    deadline = time.monotonic() + 60  # Ray reports metrics every few seconds
    while missing and time.monotonic() < deadline:
        text = scrape(server)
        missing = [m for m in WANTED if not re.search(m, text)]
        if missing:
            time.sleep(2)
    assert missing == []
