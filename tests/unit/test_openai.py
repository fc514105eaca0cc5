"""The OpenAI-compatible endpoints, driven by the official openai SDK (fake engine, no Ray)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from fastapi.testclient import TestClient

from tests.fakes import LocalClient
from tests.unit.helpers import AUTH, JFK, KEY, Recording, make_app, make_settings


@pytest.fixture
def recording() -> Recording:
    return Recording()


@pytest.fixture
def sdk(tmp_path: Path, recording: Recording) -> Iterator[openai.OpenAI]:
    with TestClient(make_app(make_settings(tmp_path), recording)) as http:
        yield openai.OpenAI(base_url="http://testserver/v1", api_key=KEY, http_client=http)


def test_transcription_in_every_response_format(sdk: openai.OpenAI) -> None:
    with JFK.open("rb") as f:
        plain = sdk.audio.transcriptions.create(model="whisper-1", file=f)
    assert plain.text == "audio part 0"
    with JFK.open("rb") as f:
        text = sdk.audio.transcriptions.create(model="whisper-1", file=f, response_format="text")
    assert text.strip() == "audio part 0"
    with JFK.open("rb") as f:
        srt = sdk.audio.transcriptions.create(model="whisper-1", file=f, response_format="srt")
    assert srt.startswith("1\n00:00:00,000 --> 00:00:30,000\n")
    with JFK.open("rb") as f:
        vtt = sdk.audio.transcriptions.create(model="whisper-1", file=f, response_format="vtt")
    assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:30.000\n")
    with JFK.open("rb") as f:
        verbose = sdk.audio.transcriptions.create(
            model="whisper-1",
            file=f,
            response_format="verbose_json",
            timestamp_granularities=["segment"],
        )
    assert verbose.text == "audio part 0" and verbose.language == "en"
    assert verbose.segments is not None and verbose.segments[0].end == 30.0


def test_options_map_onto_the_job(sdk: openai.OpenAI, recording: Recording) -> None:
    with JFK.open("rb") as f:
        sdk.audio.transcriptions.create(
            model="whisper-1", file=f, language="en", prompt="Kennedy", temperature=0
        )
    with JFK.open("rb") as f:
        sdk.audio.translations.create(model="whisper-1", file=f)
    assert recording.options == [
        {"language": "en", "initial_prompt": "Kennedy"},
        {"task": "translate"},
    ]


def test_packing_headers_map_onto_the_job(sdk: openai.OpenAI, recording: Recording) -> None:
    with JFK.open("rb") as f:
        sdk.audio.transcriptions.create(
            model="whisper-1",
            file=f,
            extra_headers={"X-Whisper-Pack": "false", "X-Whisper-Pack-Group": "user-7"},
        )
    assert recording.options == [{"pack": False, "pack_group": "user-7"}]
    with JFK.open("rb") as f, pytest.raises(openai.BadRequestError) as caught:
        sdk.audio.transcriptions.create(
            model="whisper-1", file=f, extra_headers={"X-Whisper-Pack": "maybe"}
        )
    assert caught.value.body["param"] == "X-Whisper-Pack"  # type: ignore[index]
    assert "X-Whisper-Pack" in caught.value.body["message"]  # type: ignore[index]


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"model": "gpt-4o-transcribe"}, "model"),
        ({"language": "klingon"}, "language"),
        ({"temperature": 3}, "temperature"),
        (
            {"response_format": "verbose_json", "timestamp_granularities": ["syllable"]},
            "timestamp_granularities[]",
        ),
    ],
)
def test_bad_requests_get_openai_errors(sdk: openai.OpenAI, kwargs: dict, param: str) -> None:
    with JFK.open("rb") as f, pytest.raises(openai.BadRequestError) as err:
        sdk.audio.transcriptions.create(file=f, **{"model": "whisper-1", **kwargs})
    body = err.value.body
    assert isinstance(body, dict) and body["type"] == "invalid_request_error"
    assert param in (body.get("param") or "") + body["message"]


def test_wrong_key_is_an_openai_authentication_error(tmp_path: Path) -> None:
    with TestClient(make_app(make_settings(tmp_path), LocalClient())) as http:
        sdk = openai.OpenAI(base_url="http://testserver/v1", api_key="wrong", http_client=http)
        with JFK.open("rb") as f, pytest.raises(openai.AuthenticationError) as err:
            sdk.audio.transcriptions.create(model="whisper-1", file=f)
        assert isinstance(err.value.body, dict) and err.value.body["code"] == "invalid_api_key"
        # The job API keeps its own shape.
        assert http.get("/transcribe/x").json() == {
            "detail": "authentication required: send 'Authorization: Bearer <WHISPER_API_KEY>'"
        }
        assert http.get("/transcribe/x", headers=AUTH).json()["detail"] == "no job 'x'"


def test_word_granularity_returns_timed_words(sdk: openai.OpenAI, recording: Recording) -> None:
    with JFK.open("rb") as f:
        verbose = sdk.audio.transcriptions.create(
            model="whisper-1",
            file=f,
            response_format="verbose_json",
            timestamp_granularities=["word", "segment"],
        )
    assert recording.options == [{"word_timestamps": True}]
    assert verbose.words is not None
    assert [(w.word, w.start, w.end) for w in verbose.words] == [("fake", 0.0, 30.0)]
