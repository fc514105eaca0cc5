"""Ray's own processes run with configs/ray.env, as scripts/serve starts them."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.serve.conftest import Server
from tests.serve.launcher import processes_under, ray_env

pytestmark = pytest.mark.serve

ROLES = ("ServeController", "ProxyActor", "ServeReplica:whisper:Gateway")


def environment(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def test_serves_controller_proxy_and_replicas_run_with_configs_ray_env(server: Server) -> None:
    """Ray's idle loops took 215-245 ms of CPU a second on 2 cores (the Serve controller's
    every 0.1 s, metrics handed over every 0.1 s); configs/ray.env slows them, and only
    reaches them from the environment Ray starts in."""
    assert server.proc is not None
    wanted = ray_env()
    assert wanted["RAY_SERVE_CONTROL_LOOP_INTERVAL_S"] == "0.5"
    seen = set()
    for pid in processes_under(server.proc.pid):
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        role = next((r for r in ROLES if r in cmdline), None)
        if role is None:
            continue
        env = environment(pid)
        assert {k: env.get(k) for k in wanted} == wanted, role
        seen.add(role)
    assert seen == set(ROLES)
