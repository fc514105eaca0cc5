"""Beyond one machine (issue 13): docs/operations.md's "A Ray cluster" walk-through, run as
written on this machine with three nodes: `ray start --head` (the Transcriber's node), two
`ray start --address` gateway nodes (Ray 2.60's token auth on), the jobs in the session's real
PostgreSQL, `serve deploy configs/cluster.yaml` (a proxy on every node), the README's curl,
`serve status`. Then jobs go in through the nodes' proxies and a gateway node is lost while
they run: every accepted job ends done, with its own words, taken again at most once.

Each node is a `ray start --block` in a process group of its own, stopped by signal: `ray stop`
would stop every Ray on the machine, another server's too."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.audio_util import JFK, long_jfk, words
from tests.postgres import PostgresServer
from tests.serve.conftest import KEY, submit
from tests.serve.launcher import ROOT, _ancestors, config_on_port, free_port, starting_env

pytestmark = pytest.mark.serve

BIN = Path(sys.executable).parent


class RayNode:
    """`ray start --block ARGS`, as an operator starts a node, in a process group of its own."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self.proc = subprocess.Popen(
            [str(BIN / "ray"), "start", "--block", *args],
            cwd=ROOT,
            env=env,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_for(self, pattern: str, timeout: float = 120) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, self.log.read_text())
            if found:
                return found
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            time.sleep(0.5)
        raise AssertionError(self.log.read_text()[-3000:])

    def kill(self) -> None:
        """The node's every process at once, as when its machine is lost."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)


class Cluster:
    """Three nodes, the app deployed on them; ``serve(...)`` runs the serve CLI against it."""

    def __init__(self, workdir: Path, database: str) -> None:
        self.temp = Path(tempfile.mkdtemp(prefix="rs-", dir="/tmp"))  # Ray's sockets: short
        self.port, gcs, dashboard = free_port(), free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dashboard = f"http://127.0.0.1:{dashboard}"
        self.env = {
            **starting_env(),
            "PYTHONPATH": str(ROOT),
            # The app is built on the head node, from its environment.
            "WHISPER_API_KEY": KEY,
            "DATABASE_URL": database,
            "DATA_DIR": str(workdir / "data"),
            "WHISPER_CPU_THREADS": "2",
            # A job whose gateway is gone is taken again after its lease (default 20 s).
            "LEASE_SECONDS": "5",
            # Token auth: the head makes ~/.ray/auth_token (or reuses it), the others send it.
            "RAY_AUTH_MODE": "token",
            # Not RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (scripts/serve's loopback-only box): it
            # makes a single-node Ray that refuses a second node.
        }
        self.workdir = workdir
        common = ["--temp-dir", str(self.temp), "--num-cpus", "1", "--disable-usage-stats"]
        self.nodes: list[RayNode] = []
        try:
            head = self._start(
                "head",
                "--head",
                *("--port", str(gcs), "--dashboard-host", "127.0.0.1"),
                *("--dashboard-port", str(dashboard), "--resources", '{"transcriber": 2}'),
                *common,
            )
            address = head.wait_for(r"ray start --address='([^']+)'").group(1)
            for n in range(2):  # one after the other: two starting at once race on one IP
                gateway = self._start(
                    f"gateway-{n}", "--address", address, "--resources", '{"gateway": 1}', *common
                )
                gateway.wait_for("Ray runtime started")
            config = config_on_port(workdir, self.port, config=ROOT / "configs" / "cluster.yaml")
            deployed = self.serve("deploy", str(config))
            assert deployed.returncode == 0, deployed.stdout + deployed.stderr
            deadline = time.monotonic() + 240
            while (status := self.app_status()) != "RUNNING":
                assert time.monotonic() < deadline, status
                time.sleep(2)
        except BaseException:
            self.stop()
            raise

    def _start(self, name: str, *args: str) -> RayNode:
        node = RayNode(list(args), self.env, self.workdir / f"ray-{name}.log")
        self.nodes.append(node)
        return node

    def serve(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "serve"), *args, "--address", self.dashboard],
            env=env or self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def app_status(self) -> str:
        """The app's status in `serve status` (DEPLOYING, RUNNING...)."""
        out = self.serve("status")
        assert out.returncode == 0, out.stdout + out.stderr
        apps = yaml.safe_load(out.stdout).get("applications") or {}
        return str(apps.get("whisper", {}).get("status", "NOT_STARTED"))

    def stop(self) -> None:
        """SIGTERM to every node (as `ray stop` sends), then SIGKILL what is left after 10 s."""
        for node in self.nodes:
            if node.proc.poll() is None:
                os.killpg(node.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for node in self.nodes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            node.kill()  # what SIGTERM left: its raylet and workers
        shutil.rmtree(self.temp, ignore_errors=True)


@pytest.fixture
def cluster(tmp_path: Path, postgres: PostgresServer) -> Iterator[Cluster]:
    started = None
    try:
        begin = time.monotonic()
        started = Cluster(tmp_path, postgres.database())
        print(f"three nodes up and the app RUNNING in {time.monotonic() - begin:.0f} s")
        yield started
    finally:
        if started is not None:
            started.stop()


def nodes_holding_connections(cluster: Cluster) -> dict[str, int]:
    """Which nodes' proxies hold the open connections to the HTTP port (``ss``: the owning
    process, then its ancestors up to one of the nodes' `ray start`)."""
    out = subprocess.run(
        ["ss", "-Htnp", "state", "established", f"( sport = :{cluster.port} )"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    names = {node.proc.pid: node.log.stem for node in cluster.nodes}
    held: dict[str, int] = {}
    for pid in (int(p) for p in re.findall(r"pid=(\d+)", out)):
        for ancestor in [pid, *_ancestors(pid)]:
            if ancestor in names:
                held[names[ancestor]] = held.get(names[ancestor], 0) + 1
                break
    return held


def jobs_in(url: str) -> list[tuple[str, str, int]]:
    import psycopg

    with psycopg.connect(url) as db:
        return [
            (r[0], r[1], r[2])
            for r in db.execute("SELECT id, status, attempts FROM jobs ORDER BY id").fetchall()
        ]


def retrying(lost: list[str], send: Callable[[], httpx.Response]) -> dict[str, Any]:
    """A client's retry: on a dropped connection or a 5xx, again a second later (60 s)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            r = send()
            if r.status_code < 500:
                assert r.status_code in (200, 202), r.text
                return dict(r.json())
            lost.append(f"{r.status_code} {r.text[:80]}")
        except httpx.TransportError as exc:
            lost.append(type(exc).__name__)
        assert time.monotonic() < deadline, lost
        time.sleep(1)


def long_poll(url: str, job_id: str) -> None:
    """One long poll; the node it went to may be killed meanwhile (the test polls again)."""
    with contextlib.suppress(httpx.HTTPError):
        httpx.get(
            f"{url}/transcribe/{job_id}",
            params={"wait": 20},
            headers={"Authorization": f"Bearer {KEY}"},
            timeout=30,
        )


def test_the_walk_through_then_a_gateway_node_lost_mid_work(cluster: Cluster) -> None:
    # The README's curl, then a long poll for its end.
    begin = time.monotonic()
    auth = f"Authorization: Bearer {KEY}"
    sent = subprocess.run(
        [
            "curl",
            "-sS",
            "-X",
            "POST",
            "-H",
            auth,
            "-F",
            f"file=@{JFK}",
            f"{cluster.url}/transcribe",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    first = json.loads(sent.stdout)["job_id"]
    got = subprocess.run(
        ["curl", "-sS", "-H", auth, f"{cluster.url}/transcribe/{first}?wait=60"],
        capture_output=True,
        text=True,
        check=True,
        timeout=90,
    )
    body = json.loads(got.stdout)
    assert body["status"] == "done", body
    assert "ask not what your country can do for you" in words(body["text"])
    status = yaml.safe_load(cluster.serve("status").stdout)["applications"]["whisper"]
    assert {d: v["status"] for d, v in status["deployments"].items()} == {
        "Gateway": "HEALTHY",
        "Transcriber": "HEALTHY",
    }
    refused = cluster.serve("status", env={**cluster.env, "RAY_AUTH_MODE": "disabled"})
    assert refused.returncode != 0, refused.stdout  # no token, no cluster

    database = cluster.env["DATABASE_URL"]
    audio = long_jfk(30, 2)
    ids: list[str] = []
    for _ in range(8):  # a connection each: the kernel spreads them over the nodes' proxies
        with httpx.Client(
            base_url=cluster.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60
        ) as c:
            ids.append(submit(c, audio, "jfk2.wav", pack="false"))
    deadline = time.monotonic() + 120
    while sum(status == "processing" for _, status, _ in jobs_in(database)) < 4:
        assert time.monotonic() < deadline, jobs_in(database)
        time.sleep(0.2)
    # A long poll of each job, a connection each, held open: the nodes' proxies share them
    # (all of them on one of the three: 3 x (1/3)^8, 1 in 2,000).
    polls = [
        threading.Thread(target=long_poll, args=(cluster.url, job_id), daemon=True)
        for job_id in ids
    ]
    for poll in polls:
        poll.start()
    deadline = time.monotonic() + 10
    while len(held := nodes_holding_connections(cluster)) < 2:
        assert time.monotonic() < deadline, held
        time.sleep(0.2)
    print(f"open connections by node: {held}")
    print(f"walk-through done {time.monotonic() - begin:.0f} s; killing a node")
    cluster.nodes[1].kill()  # a gateway node, its proxy with it, mid-work
    lost: list[str] = []
    with httpx.Client(
        base_url=cluster.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60
    ) as c:
        # Intake goes on. Until Ray's proxies hear the lost gateway is gone, a request
        # routed to it fails (Ray's proxy closes the connection): a client retries with
        # its Idempotency-Key, as docs/api.md says, and gets one job.
        late = [
            retrying(
                lost,
                lambda k=k: c.post(
                    "/transcribe",
                    headers={"Idempotency-Key": f"late-{k}"},
                    files={"file": ("jfk.flac", JFK.read_bytes())},
                ),
            )["job_id"]
            for k in range(2)
        ]
        for job_id in ids + late:
            deadline = time.monotonic() + 300
            while (
                body := retrying(
                    lost, lambda j=job_id: c.get(f"/transcribe/{j}", params={"wait": 30})
                )
            )["status"] not in ("done", "error"):
                assert time.monotonic() < deadline, body
            assert body["status"] == "done", body
            said = words(body["text"])
            expected = 2 if job_id in ids else 1
            assert said.count("ask not what your country can do for you") == expected, said
    print(f"all done {time.monotonic() - begin:.0f} s; failed, then retried: {lost}")
    rows = jobs_in(database)
    assert sorted(r[0] for r in rows) == sorted([first, *ids, *late])
    assert all(status == "done" for _, status, _ in rows)
    # The lost node's gateway held some of the jobs: they were taken again, once.
    assert any(attempts == 2 for _, _, attempts in rows), rows
    assert all(attempts <= 2 for _, _, attempts in rows), rows
