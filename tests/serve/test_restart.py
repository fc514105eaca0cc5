"""Finished jobs survive a restart of the whole server (runs last: it restarts it)."""

from __future__ import annotations

import httpx
import pytest

from tests.audio_util import JFK
from tests.serve.conftest import Server, submit, wait_done

pytestmark = pytest.mark.serve


def test_done_job_is_still_there_after_restart(server: Server, client: httpx.Client) -> None:
    job_id = submit(client, JFK.read_bytes())
    before = wait_done(client, job_id)
    assert before["status"] == "done"
    server.restart()
    after = client.get(f"/transcribe/{job_id}")
    assert after.status_code == 200
    assert after.json() == before
