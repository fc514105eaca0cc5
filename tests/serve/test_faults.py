"""Fault injection on the real server: a killed replica, a killed server, load, big bodies."""

from __future__ import annotations

import concurrent.futures
import http.client
import os
import signal
import time

import httpx
import pytest

from tests.audio_util import DATA, JFK, long_jfk
from tests.serve.conftest import KEY, MAX_QUEUED_JOBS, PORT, Server, submit, wait_done
from tests.serve.launcher import replica_pids

pytestmark = pytest.mark.serve


def wait_status(client: httpx.Client, job_id: str, status: str, timeout: float = 60) -> None:
    """Until the job is listed with ``status``. Through the listing, which answers at once: a
    read of the job itself without ``wait`` is held up to STATUS_POLL_INTERVAL_S (3 s, from
    its submit), and a short job can go from queued through processing to done inside one
    hold (it did: the poll then saw ``done`` until its timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        listed = client.get("/transcribe", params={"status": status, "limit": 100}).json()
        if any(job["job_id"] == job_id for job in listed["jobs"]):
            return
        assert time.monotonic() < deadline, f"job never reached {status}"
        time.sleep(0.05)


def test_killing_the_whisper_replica_mid_job_retries_the_job(
    server: Server, client: httpx.Client
) -> None:
    audio = long_jfk()
    ids = [submit(client, audio) for _ in range(3)]
    wait_status(client, ids[0], "processing")
    time.sleep(0.5)  # the replica is decoding now
    assert server.proc is not None
    pids = replica_pids("Transcriber", under=server.proc.pid)  # ours only
    assert pids, "no Transcriber replica process found"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    results = [wait_done(client, job_id, timeout=240) for job_id in ids]
    assert [r["status"] for r in results] == ["done"] * 3, results
    assert max(r["attempts"] for r in results) >= 2
    assert all("fellow americans" in r["text"].lower() for r in results)


def test_sigkill_of_the_whole_server_loses_no_job(server: Server, client: httpx.Client) -> None:
    audio = JFK.read_bytes()
    ids = [submit(client, audio) for _ in range(12)]
    wait_status(client, ids[0], "processing")
    server.kill()
    server.start()
    results = [wait_done(client, job_id, timeout=240) for job_id in ids]
    assert [r["status"] for r in results] == ["done"] * 12, results
    assert all("ask not what your country" in r["text"].lower() for r in results)


def test_bounded_load_every_job_ends_done_or_429(server: Server, client: httpx.Client) -> None:
    """40 submissions from 8 clients to two gateway replicas sharing one SQLite file."""
    audio = (DATA / "sentinel.wav").read_bytes()

    def one(_i: int) -> tuple[int, str | None]:
        r = client.post("/transcribe", files={"file": ("s.wav", audio)})
        return r.status_code, (r.json().get("job_id") if r.status_code == 202 else None)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, range(40)))
    codes = [code for code, _ in answers]
    assert set(codes) <= {202, 429}, codes
    accepted = [job_id for _, job_id in answers if job_id]
    assert len(accepted) >= MAX_QUEUED_JOBS
    results = [wait_done(client, job_id) for job_id in accepted]
    assert all(r["status"] == "done" for r in results)
    gateway_logs = [p for p in server.log_files() if "replica_whisper_Gateway" in p.name]
    text = "".join(p.read_text(errors="replace") for p in gateway_logs)
    assert "database is locked" not in text
    serving = [p for p in gateway_logs if " queued: " in p.read_text(errors="replace")]
    assert len(serving) >= 2, "both gateway replicas should have taken submissions"


def test_a_declared_300_mb_body_is_refused_before_it_is_sent(server: Server) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=30)
    conn.putrequest("POST", "/transcribe")
    conn.putheader("Authorization", f"Bearer {KEY}")
    conn.putheader("Content-Type", "multipart/form-data; boundary=b")
    conn.putheader("Content-Length", str(300_000_000))
    conn.endheaders()
    begin = time.monotonic()
    response = conn.getresponse()  # not one byte of the body was sent
    assert response.status == 413
    assert b"300.0 MB" in response.read()
    assert time.monotonic() - begin < 10
    conn.close()
