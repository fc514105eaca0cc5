"""Beyond one machine (issue 13): a Ray cluster of three nodes on this machine
(tests/serve/cluster.py: a head node for the Transcriber, two gateway nodes), the jobs in the
session's real PostgreSQL, the app deployed with `serve deploy configs/cluster.yaml` (a proxy on
every node). Jobs go in through the nodes' proxies; a gateway node is removed while they run;
every accepted job ends done, with its own words, each on one attempt that wrote its end."""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.audio_util import JFK, long_jfk, words
from tests.postgres import PostgresServer
from tests.serve.conftest import KEY, submit
from tests.serve.launcher import ROOT, config_on_port, free_port

pytestmark = pytest.mark.serve

SERVE = str(Path(sys.executable).parent / "serve")


@dataclass
class RayCluster:
    proc: subprocess.Popen[str]
    info: dict[str, Any]
    env: dict[str, str]
    url: str

    def command(self, line: str, timeout: float = 120) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return read_json(self.proc, timeout)

    def serve(self, *args: str, timeout: float = 120) -> str:
        out = subprocess.run(
            [SERVE, *args, "--address", self.info["dashboard"]],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        return out.stdout


def read_json(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    """The next JSON line the cluster's process prints (Ray's own lines skipped)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 1)
        if not ready:
            assert proc.poll() is None, "the cluster's process exited"
            continue
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"the cluster's process exited ({proc.wait()})")
        if line.startswith("{"):
            return dict(json.loads(line))
    raise TimeoutError("the cluster's process said nothing")


@pytest.fixture
def cluster(tmp_path: Path, postgres: PostgresServer) -> Iterator[RayCluster]:
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")},
        "PYTHONPATH": str(ROOT),
        "WHISPER_API_KEY": KEY,
        "DATABASE_URL": postgres.database(),
        "DATA_DIR": str(tmp_path / "data"),
        "WHISPER_CPU_THREADS": "2",
        # A job whose gateway is gone is taken again after its lease (default 20 s).
        "LEASE_SECONDS": "5",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.serve.cluster"],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=(tmp_path / "cluster.log").open("w"),
        text=True,
        start_new_session=True,
    )
    try:
        info = read_json(proc, 180)
        ray_cluster = RayCluster(proc, info, env, f"http://127.0.0.1:{port}")
        config = config_on_port(tmp_path, port, config=ROOT / "configs" / "cluster.yaml")
        ray_cluster.serve("deploy", str(config))
        deadline = time.monotonic() + 240
        while (status := app_status(ray_cluster)) != "RUNNING":
            assert time.monotonic() < deadline, status
            time.sleep(2)
        yield ray_cluster
    finally:
        try:
            if proc.poll() is None and proc.stdin is not None:
                proc.stdin.write("stop\n")
                proc.stdin.flush()
                proc.wait(timeout=90)
        except (OSError, subprocess.TimeoutExpired):
            pass
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)


def app_status(cluster: RayCluster) -> str:
    """The app's status in `serve status` (DEPLOYING, RUNNING...)."""
    apps = yaml.safe_load(cluster.serve("status")).get("applications") or {}
    return str(apps.get("whisper", {}).get("status", "NOT_STARTED"))


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


def test_jobs_through_every_nodes_proxy_all_end_done_when_a_gateway_node_is_lost(
    cluster: RayCluster,
) -> None:
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
    cluster.command("remove 0")  # a gateway node and its proxy, mid-work
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
    print(f"requests that failed while the node was lost (then retried): {lost}")
    rows = jobs_in(database)
    assert sorted(r[0] for r in rows) == sorted(ids + late)
    assert all(status == "done" for _, status, _ in rows)
    # The lost node's gateway held some of the jobs: they were taken again, once.
    assert any(attempts == 2 for _, _, attempts in rows), rows
    assert all(attempts <= 2 for _, _, attempts in rows), rows


class RayStart:
    """`ray start --block` (a node, as an operator starts one), in a process group of its own:
    `ray stop` would stop every Ray node on the machine, another server's too."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "ray"), "start", "--block", *args],
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

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # its raylet and workers, if left
        self.proc.wait(timeout=30)


def test_serve_deploy_to_a_cluster_started_with_ray_start_as_operations_md_says(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    """docs/operations.md, "A Ray cluster": `ray start --head`, `ray start --address` on
    a second node, `serve deploy configs/cluster.yaml` (Ray 2.60's token auth on), the
    README's curl, `serve status`; then the nodes are stopped."""
    temp = Path(tempfile.mkdtemp(prefix="rs-", dir="/tmp"))  # Ray's sockets: short paths
    port, gcs, dashboard = free_port(), free_port(), free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")},
        "PYTHONPATH": str(ROOT),
        "WHISPER_API_KEY": KEY,
        "DATABASE_URL": postgres.database(),
        "DATA_DIR": str(tmp_path / "data"),
        "WHISPER_CPU_THREADS": "2",
        # Not RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (scripts/serve's loopback-only box): it
        # makes a single-node Ray that refuses a second node.
        # Ray 2.60's token auth: the head makes ~/.ray/auth_token, the others send it.
        "RAY_AUTH_MODE": "token",
    }
    common = ["--temp-dir", str(temp), "--num-cpus", "1", "--disable-usage-stats"]
    head = RayStart(
        [
            "--head",
            "--port",
            str(gcs),
            "--dashboard-host",
            "127.0.0.1",
            "--dashboard-port",
            str(dashboard),
            "--resources",
            '{"transcriber": 2, "gateway": 1}',
            *common,
        ],
        env,
        tmp_path / "head.log",
    )
    nodes = [head]
    try:
        address = head.wait_for(r"ray start --address='([^']+)'").group(1)
        worker = RayStart(
            ["--address", address, "--resources", '{"gateway": 1}', *common],
            env,
            tmp_path / "worker.log",
        )
        nodes.append(worker)
        worker.wait_for("Ray runtime started")
        config = config_on_port(tmp_path, port, config=ROOT / "configs" / "cluster.yaml")
        cli = RayCluster(
            proc=head.proc,  # type: ignore[arg-type]
            info={"dashboard": f"http://127.0.0.1:{dashboard}"},
            env=env,
            url=f"http://127.0.0.1:{port}",
        )
        cli.serve("deploy", str(config))
        deadline = time.monotonic() + 240
        while (status := app_status(cli)) != "RUNNING":
            assert time.monotonic() < deadline, status
            time.sleep(2)
        # The README's curl, then a long poll for its end.
        sent = subprocess.run(
            [
                "curl",
                "-sS",
                "-X",
                "POST",
                "-H",
                f"Authorization: Bearer {KEY}",
                "-F",
                f"file=@{JFK}",
                f"{cli.url}/transcribe",
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        job_id = json.loads(sent.stdout)["job_id"]
        got = subprocess.run(
            [
                "curl",
                "-sS",
                "-H",
                f"Authorization: Bearer {KEY}",
                f"{cli.url}/transcribe/{job_id}?wait=60",
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=90,
        )
        body = json.loads(got.stdout)
        assert body["status"] == "done", body
        assert "ask not what your country can do for you" in words(body["text"])
        deployments = yaml.safe_load(cli.serve("status"))["applications"]["whisper"]["deployments"]
        assert {d: v["status"] for d, v in deployments.items()} == {
            "Gateway": "HEALTHY",
            "Transcriber": "HEALTHY",
        }
        # Without the token, the cluster refuses the CLI.
        refused = subprocess.run(
            [SERVE, "status", "--address", cli.info["dashboard"]],
            env={**env, "RAY_AUTH_MODE": "disabled"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert refused.returncode != 0 or "RUNNING" not in refused.stdout
    finally:
        for node in reversed(nodes):
            node.stop()
        shutil.rmtree(temp, ignore_errors=True)
