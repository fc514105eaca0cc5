"""The command-line client against the app (fake engine, no Ray)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from serve_app.cli import main
from tests.fakes import LocalClient, long_job_client
from tests.unit.helpers import JFK, KEY, make_app, make_settings


@pytest.fixture
def http(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    with TestClient(make_app(make_settings(tmp_path), LocalClient())) as client:
        client.headers["Authorization"] = f"Bearer {KEY}"
        yield client


def test_transcribe_prints_the_transcript(
    http: TestClient, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["transcribe", str(JFK)], client=http) == 0
    assert capsys.readouterr().out == "audio part 0\n"
    assert main(["transcribe", str(JFK), "--format", "srt"], client=http) == 0
    assert capsys.readouterr().out.startswith("1\n00:00:00,000 --> 00:00:30,000\naudio part 0")


def test_no_wait_then_status(http: TestClient, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["transcribe", str(JFK), "--no-wait"], client=http) == 0
    # Only the id, so that ID=$(whisper-serve transcribe f --no-wait) works (issue 12, item 8).
    job_id = capsys.readouterr().out.strip()
    assert len(job_id) == 36 and "\t" not in job_id
    http.get(
        f"/transcribe/{job_id}", params={"wait": 10}, headers={"Authorization": f"Bearer {KEY}"}
    )
    assert main(["status", job_id, "--format", "vtt"], client=http) == 0
    assert capsys.readouterr().out.startswith("WEBVTT")


def test_errors_are_one_line_and_exit_2(
    http: TestClient,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    assert main(["transcribe", str(tmp_path / "missing.mp3")], client=http) == 2
    assert "no such file" in capsys.readouterr().err
    http.headers["Authorization"] = "Bearer wrong"
    assert main(["status", "x"], client=http) == 2
    assert "401: invalid API key" in capsys.readouterr().err


def test_a_long_job_draws_a_progress_bar(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    slow = long_job_client(chunks=4, seconds_per_batch=0.6)
    with TestClient(make_app(make_settings(tmp_path), slow)) as client:
        client.headers["Authorization"] = f"Bearer {KEY}"
        assert main(["transcribe", str(JFK), "--progress"], client=client) == 0
    err = capsys.readouterr().err
    bars = re.findall(r"processing \[(#*)(-*)\] +(\d+)%", err)
    assert bars, err
    for filled, empty, percent in bars:
        assert len(filled) + len(empty) == 24 and percent in ("0", "25", "50", "75")
        assert len(filled) == round(24 * int(percent) / 100)
    assert re.search(r"done \[#{24}\] 100%", err), err
