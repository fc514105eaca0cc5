"""The seed's API over real HTTP, through Ray Serve, with the real tiny.en model."""

from __future__ import annotations

import concurrent.futures
import json
import re
import subprocess
import time

import httpx
import jiwer
import pytest
from faster_whisper import WhisperModel

from deployments.models import resolve_model
from tests.audio_util import DATA, JFK, JFK_TEXT, long_jfk, real_speech, wav_bytes, words
from tests.serve.conftest import KEY, ORIGIN, OTHER_KEY, Server, submit, wait_done

pytestmark = pytest.mark.serve


def plain_faster_whisper(audio_path: str) -> str:
    """What plain faster-whisper (its defaults, same bundled model) says."""
    model = WhisperModel(resolve_model("tiny.en", cache_dir="/tmp"), compute_type="int8")
    segments, _info = model.transcribe(audio_path)
    return "".join(s.text for s in segments)


def test_seed_curl_commands_work_as_written(server: Server) -> None:
    health = subprocess.run(
        ["curl", "-s", f"{server.url}/health"], capture_output=True, text=True, check=True
    )
    assert json.loads(health.stdout)["status"] == "ok"
    posted = subprocess.run(
        [
            "curl", "-s", "-X", "POST",
            "-H", f"Authorization: Bearer {KEY}",
            "-F", f"file=@{JFK}",
            f"{server.url}/transcribe",
        ],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    job = json.loads(posted.stdout)
    assert job["status"] == "queued"
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}) as c:
        wait_done(c, job["job_id"])
    got = subprocess.run(
        [
            "curl", "-s", "-X", "GET",
            "-H", f"Authorization: Bearer {KEY}",
            f"{server.url}/transcribe/{job['job_id']}",
        ],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    done = json.loads(got.stdout)
    assert done["status"] == "done"
    assert "ask not what your country can do for you" in words(done["text"])
    assert all({"start", "end", "text"} <= set(s) for s in done["segments"])


def test_word_error_rate_matches_plain_faster_whisper(client: httpx.Client, tmp_path) -> None:
    long_path = tmp_path / "long.wav"
    long_path.write_bytes(long_jfk())
    for path, reference in ((JFK, JFK_TEXT), (long_path, " ".join([JFK_TEXT] * 4))):
        done = wait_done(client, submit(client, path.read_bytes(), path.name))
        ours = jiwer.wer(reference, words(done["text"]))
        plain = jiwer.wer(reference, words(plain_faster_whisper(str(path))))
        assert ours <= plain + 0.03, (path.name, ours, plain)


def test_49_second_file_comes_back_whole(client: httpx.Client) -> None:
    done = wait_done(client, submit(client, long_jfk()))
    assert done["status"] == "done"
    assert done["duration"] == pytest.approx(49.0, abs=0.1)
    assert words(done["text"]).count("fellow americans") >= 3
    assert done["segments"][-1]["end"] > 44


def test_a_long_job_shows_progress_and_language_while_it_runs(client: httpx.Client) -> None:
    """Progress streams from the Whisper replica through Ray to the job (10 windows of real
    speech, more than one batch)."""
    job_id = submit(client, wav_bytes(real_speech(300)))
    seen: list[tuple[float, str | None]] = []
    body: dict = {}
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        body = client.get(f"/transcribe/{job_id}").json()
        if body["status"] == "processing" and "progress" in body:
            seen.append((body["progress"], body.get("language")))
        if body["status"] in ("done", "error"):
            break
        time.sleep(0.2)
    assert body["status"] == "done" and body["progress"] == 1.0
    assert any(0 < p < 1 for p, _ in seen), seen
    assert all(lang == "en" for p, lang in seen if p > 0), seen
    # real_speech(300) says jfk 7 times between other sentences (the model tier compares
    # such a file with plain faster-whisper word by word).
    assert words(body["text"]).count("fellow americans") == 7


def test_concurrent_jobs_are_batched_together(server: Server, client: httpx.Client) -> None:
    """Eight jobs that opt out of packing: decoded in shared batches, each alone, the same."""
    audio = JFK.read_bytes()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(lambda _i: submit(client, audio, pack="false"), range(8)))
    results = [wait_done(client, job_id) for job_id in ids]
    assert all(r["status"] == "done" for r in results)
    assert len({words(r["text"]) for r in results}) == 1
    sizes = [
        int(n)
        for path in server.log_files()
        if "Transcriber" in path.name
        for n in re.findall(r"decoding a batch of (\d+) chunks", path.read_text(errors="replace"))
    ]
    assert max(sizes) > 1, sizes


def test_auth_and_unknown_ids(server: Server, client: httpx.Client) -> None:
    assert httpx.get(f"{server.url}/transcribe/x").status_code == 401
    bad = httpx.get(f"{server.url}/transcribe/x", headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401 and "detail" in bad.json()
    missing = client.get("/transcribe/00000000-0000-0000-0000-000000000000")
    assert missing.status_code == 404 and "no job" in missing.json()["detail"]
    assert httpx.get(f"{server.url}/docs").status_code == 200


def test_cors_through_the_proxy(server: Server) -> None:
    pre = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization",
    }
    ok = httpx.options(f"{server.url}/transcribe", headers={"Origin": ORIGIN, **pre})
    assert ok.headers.get("access-control-allow-origin") == ORIGIN
    bad = httpx.options(
        f"{server.url}/transcribe", headers={"Origin": "https://evil.example", **pre}
    )
    assert "access-control-allow-origin" not in bad.headers


def test_upload_limits_through_the_proxy(client: httpx.Client) -> None:
    too_big = b"\0" * 26_000_000
    r = client.post("/transcribe", files={"file": ("big.wav", too_big)})
    assert r.status_code == 413 and "MAX_FILE_SIZE_MB" in r.json()["detail"]

    def chunks():
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
        for _ in range(30):
            yield b"\0" * 1_000_000
        yield b"\r\n--b--\r\n"

    r = client.post(
        "/transcribe",
        headers={"Content-Type": "multipart/form-data; boundary=b"},
        content=chunks(),
    )
    assert r.status_code == 413
    for files, status in (
        ({"file": ("e.mp3", b"")}, 400),
        ({"file": ("t.txt", b"just some text, no sound here\n" * 50)}, 415),
    ):
        r = client.post("/transcribe", files=files)
        assert r.status_code == status and r.json()["detail"]


def test_packed_jobs_of_two_clients_never_mix(server: Server, client: httpx.Client) -> None:
    """Two clients speak different sentences at once: no word crosses between them."""
    fox, giraffe = (DATA / "fox.wav").read_bytes(), (DATA / "sentinel.wav").read_bytes()
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {OTHER_KEY}"}, timeout=60
    ) as other:
        work = [(client, fox), (other, giraffe)] * 6
        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            ids = list(pool.map(lambda cw: (cw[0], submit(cw[0], cw[1])), work))
        results = [wait_done(c, job_id) for c, job_id in ids]
    for (c, _job), result in zip(ids, results, strict=True):
        heard = words(result["text"])
        if c is client:
            assert "fox" in heard and "giraffe" not in heard, heard
        else:
            assert "giraffe" in heard and "fox" not in heard, heard
    packed = [
        p
        for p in server.log_files()
        if "Transcriber" in p.name
        if "packed" in p.read_text(errors="replace")
    ]
    assert packed, "short jobs of one client should have shared windows"


def test_the_openai_sdk_transcribes_through_the_real_server(server: Server) -> None:
    import openai

    sdk = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, timeout=120)
    with JFK.open("rb") as f:
        verbose = sdk.audio.transcriptions.create(
            model="whisper-1",
            file=f,
            response_format="verbose_json",
            timestamp_granularities=["word", "segment"],
        )
    assert "ask not what your country can do for you" in words(verbose.text)
    assert verbose.segments and verbose.segments[-1].end <= 11.1
    assert verbose.words and words(" ".join(w.word for w in verbose.words)) == words(verbose.text)
    assert all(0 <= w.start <= w.end <= 11.1 for w in verbose.words)
    with JFK.open("rb") as f:
        srt = sdk.audio.transcriptions.create(model="whisper-1", file=f, response_format="srt")
    assert srt.startswith("1\n00:00:0")
