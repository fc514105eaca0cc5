"""The contract between gateway and Whisper replica (deployments/protocol.py)."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from deployments.protocol import LANGUAGE_CODES, TranscribeOptions
from serve_app.auth import fingerprint
from tests.fakes import LocalClient
from tests.imports import loaded_by
from tests.unit.helpers import AUTH, JFK, KEY, make_app, make_settings, wait_done


def test_the_languages_are_faster_whispers() -> None:
    from faster_whisper.tokenizer import _LANGUAGE_CODES

    assert set(_LANGUAGE_CODES) == LANGUAGE_CODES


def test_the_gateway_and_the_app_builder_import_no_engine() -> None:
    """Issue 12, item 3: only a Whisper replica loads faster-whisper, CTranslate2 or torch."""
    gateway = ["serve_app.builder", "serve_app.main", "serve_app.gateway"]
    assert loaded_by(gateway, ("faster_whisper", "ctranslate2", "torch")) == []


def test_a_form_field_and_the_replica_read_the_same_options(client: TestClient) -> None:
    r = client.post(
        "/transcribe",
        headers=AUTH,
        files={"file": ("a.flac", JFK.read_bytes())},
        data={"language": "FR", "beam_size": "1"},
    )
    assert r.status_code == 400
    assert "beam_size" in r.json()["detail"]  # the server's choice, not a client's
    assert TranscribeOptions(language="FR").language == "fr"


def test_a_job_whose_options_this_version_does_not_know_ends_as_bad_input(
    tmp_path: Path,
) -> None:
    """A job record made by another version: its unknown option is named, no retry."""
    app = make_app(make_settings(tmp_path), LocalClient())
    app.state.background.sweep_interval_s = 0.05
    audio = tmp_path / "old.audio"
    audio.write_bytes(JFK.read_bytes())
    with TestClient(app) as c:
        app.state.store.create(
            job_id="old-job",
            owner=fingerprint(KEY),
            size_bytes=audio.stat().st_size,
            duration=11.0,
            audio_path=str(audio),
            options={"colour": "red"},
            deadline_s=600,
            max_active=10,
        )
        done = wait_done(c, "old-job")
    assert done["status"] == "error" and done["error_code"] == "invalid_audio"
    assert "colour" in done["error"] and done["attempts"] == 1
