"""The real server with its jobs in PostgreSQL (DATABASE_URL): both gateway replicas of
serve_config.yaml share the queue, and a long poll hears of an end on either. The session's
server is started again for it, then given back as it was."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.audio_util import JFK, words
from tests.postgres import PostgresServer
from tests.serve.conftest import KEY, Server, submit

pytestmark = pytest.mark.serve


@pytest.fixture
def on_postgres(server: Server, postgres: PostgresServer) -> Iterator[str]:
    url = postgres.database()
    server.stop()
    server.env["DATABASE_URL"] = url
    try:
        server.start()
        yield url
    finally:
        server.stop()
        del server.env["DATABASE_URL"]
        server.start()


def test_the_server_runs_its_jobs_from_postgresql(server: Server, on_postgres: str) -> None:
    import psycopg

    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60
    ) as c:
        ids = [submit(c, JFK.read_bytes(), "jfk.flac", pack="false") for _ in range(6)]
        for job_id in ids:
            begin = time.monotonic()
            done = c.get(f"/transcribe/{job_id}", params={"wait": 60}).json()
            assert done["status"] == "done", done
            assert "ask not what your country can do for you" in words(done["text"])
            assert time.monotonic() - begin < 60
        listed = c.get("/transcribe", params={"limit": 100}).json()["jobs"]
        assert set(ids) <= {j["job_id"] for j in listed}
    with psycopg.connect(on_postgres) as db:
        rows = db.execute("SELECT id, status, attempts FROM jobs").fetchall()
        kept = db.execute("SELECT count(*) FROM job_audio").fetchone()
    assert sorted(r[0] for r in rows) == sorted(ids)
    assert all(r[1] == "done" and r[2] == 1 for r in rows)
    assert kept == (0,)  # each job's audio left with its end
