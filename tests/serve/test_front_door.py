"""Issue 11's attacks on the real server: through Ray's proxy (the default, on loopback) and
through the bundled nginx (configs/nginx, the production path), by a black-box client."""

from __future__ import annotations

import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.attacks import (
    HealthProbe,
    answers_now,
    big_header,
    chunked_upload,
    stalled_upload,
    status_of,
    submit_as,
)
from tests.serve.conftest import KEY, MAX_UPLOADS_PER_KEY, OTHER_KEY, Server
from tests.serve.launcher import NginxFront, listening

pytestmark = pytest.mark.serve


@pytest.fixture(scope="module")
def front(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NginxFront]:
    if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
        pytest.fail("nginx is not installed (scripts/test installs it: apt-get install nginx)")
    proxy = NginxFront(tmp_path_factory.mktemp("front"), server.port)
    proxy.start()
    yield proxy
    proxy.stop()


def test_the_default_config_listens_on_loopback_only(server: Server) -> None:
    """Ray's proxy caps no header: the default serve_config keeps it off the network."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing address
        address = s.getsockname()[0]
    if address.startswith("127."):
        pytest.skip("this machine has no address but loopback")
    with socket.socket() as s:
        s.settimeout(2)
        assert s.connect_ex((address, server.port)) != 0, f"the server answers on {address}"


def test_ray_listens_on_loopback_only_but_for_serves_replica_grpc(server: Server) -> None:
    """Issue 11: GCS, raylet, dashboard agent and metrics ports listened on all interfaces.
    With RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (scripts/serve) Ray's node address is loopback."""
    assert server.proc is not None
    found = listening(server.proc.pid)
    assert ("127.0.0.1", server.port) in {(a, p) for a, p, _ in found}
    beyond = [(a, p, n) for a, p, n in found if not (a.startswith("127.") or a == "::1")]
    # Ray Serve 2.60 binds each replica's inter-deployment gRPC server to [::]:0, hardcoded
    # (ray/serve/_private/replica.py, _on_initialized): docs/operations.md, "Ports", says
    # to firewall it.
    assert all("ServeReplica" in name for _, _, name in beyond), beyond
    assert len(beyond) <= 4, beyond


def test_a_huge_header_is_431_json_at_nginx_and_health_stays_fast(front: NginxFront) -> None:
    """Issue 11: one key-less 192 MB header stalled every /health for 38 s (Ray's proxy)."""
    with HealthProbe(front.url) as probe:
        answer = big_header(front.port, 64)
    assert status_of(answer) == 431, answer[:200]
    assert b'"detail"' in answer
    assert probe.codes == {200}
    assert max(probe.latencies) < 1.0, max(probe.latencies)


def test_a_chunked_body_over_the_limit_is_refused_early(front: NginxFront, server: Server) -> None:
    """Issue 11: a 480 MB chunked body was read whole. nginx cuts it at 26 MB; Ray's proxy,
    which reads ahead of the app, answers 413 once the app has the file limit."""
    with HealthProbe(front.url) as probe:
        answer, sent = chunked_upload(front.port, KEY, 480)
    assert status_of(answer) == 413, answer[:200]
    # nginx answers at 26 MB; the client sees the answer between 1 MB writes, while nginx
    # drains what is in flight (lingering close): under 40 MB in earlier runs, 47 once.
    assert sent < 100, sent
    assert max(probe.latencies) < 1.0
    answer, sent = chunked_upload(server.port, KEY, 480)
    assert status_of(answer) == 413, answer[:200]
    assert b"content-type: application/json" in answer.lower()
    assert sent < 480, sent


def test_stalled_uploads_of_one_key_leave_other_keys_served(server: Server) -> None:
    """Issue 11: 520 uploads that declared 1000 bytes and stopped after 150 blocked every
    client for 140 s. Now one key gets MAX_UPLOADS_PER_KEY of them per gateway and 429s."""
    stalled: list[socket.socket] = []
    try:
        stalled = [stalled_upload(server.port, KEY) for _ in range(40)]
        time.sleep(1.0)
        codes = answers_now(stalled)  # 0: still held, a stalled upload in progress
        # Two gateways, MAX_UPLOADS_PER_KEY each (Ray may route unevenly: a little room).
        assert codes.count(429) >= 40 - 2 * MAX_UPLOADS_PER_KEY - 2, codes
        started = time.monotonic()
        other = submit_as(server.url, OTHER_KEY, timeout=30)
        assert other.status_code == 202, other.text
        assert time.monotonic() - started < 2.0
        started = time.monotonic()
        assert httpx.get(f"{server.url}/health", timeout=30).status_code == 200
        assert time.monotonic() - started < 1.0
    finally:
        for sock in stalled:
            sock.close()
