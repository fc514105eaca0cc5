"""The serve tier's helpers touch only the servers the tests started."""

from __future__ import annotations

import subprocess
import sys
import time

from tests.serve.launcher import replica_pids

SLEEP = "import time; time.sleep(60)"


def test_replica_pids_finds_only_replicas_under_our_server() -> None:
    """Another server's replica on the same machine (here a process named like one)
    is never found, so the fault tests cannot kill it."""
    name = "ServeReplica:whisper:Transcriber"
    theirs = subprocess.Popen([sys.executable, "-c", SLEEP, name])
    ours = subprocess.Popen(
        ["bash", "-c", f'{sys.executable} -c "{SLEEP}" {name} & wait'], start_new_session=True
    )
    try:
        deadline = time.monotonic() + 10
        found: list[int] = []
        while not found and time.monotonic() < deadline:
            found = replica_pids("Transcriber", under=ours.pid)
            time.sleep(0.05)
        assert len(found) == 1 and found[0] != theirs.pid
        assert theirs.pid not in replica_pids("Transcriber", under=ours.pid)
        assert replica_pids("Transcriber", under=theirs.pid) == []
    finally:
        for proc in (theirs, ours):
            proc.kill()
        subprocess.run(["pkill", "-KILL", "-g", str(ours.pid)], check=False)
