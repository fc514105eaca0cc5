"""configs/ray.env reaches Ray the way each start path starts it: scripts/serve exports it
(a variable already set wins), docker-compose's Ray services read it, and the tests' and
bench's servers (tests/serve/launcher.py) start with it."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import yaml

from tests.serve.launcher import ROOT, ServeProcess, ray_env

SERVE = (ROOT / "scripts" / "serve").read_text()


def exported_by_scripts_serve(env: dict[str, str]) -> dict[str, str]:
    """scripts/serve's loop over configs/ray.env, run alone in ``env``; what it exports."""
    loop = re.search(r"^while IFS='=' read .*?^done < configs/ray.env$", SERVE, re.M | re.S)
    assert loop, "scripts/serve no longer reads configs/ray.env"
    out = subprocess.run(
        ["bash", "-euc", loop.group(0) + "\nenv -0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        check=True,
    ).stdout
    return dict(item.decode().split("=", 1) for item in out.split(b"\0") if b"=" in item)


def test_the_file_holds_ray_serve_settings() -> None:
    settings = ray_env()
    assert settings["RAY_SERVE_CONTROL_LOOP_INTERVAL_S"] == "0.5"
    assert settings["RAY_SERVE_METRICS_EXPORT_INTERVAL_MS"] == "1000"
    assert all(name.startswith("RAY_") for name in settings)


def test_scripts_serve_exports_it_and_a_variable_already_set_wins() -> None:
    base = {"PATH": os.environ["PATH"]}
    assert ray_env().items() <= exported_by_scripts_serve(base).items()
    mine = exported_by_scripts_serve({**base, "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.2"})
    assert mine["RAY_SERVE_CONTROL_LOOP_INTERVAL_S"] == "0.2"
    assert mine["RAY_SERVE_METRICS_EXPORT_INTERVAL_MS"] == "1000"


def test_composes_ray_processes_read_it() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    for name in ("whisper-server", "ray-head", "ray-worker"):
        files = services[name]["env_file"]
        assert files[0] == "configs/ray.env", name
    assert (ROOT / "configs" / "ray.env").is_file()


def test_the_launcher_starts_servers_with_it_under_the_callers_environment(
    tmp_path: Path,
) -> None:
    server = ServeProcess(tmp_path, {"RAY_SERVE_METRICS_EXPORT_INTERVAL_MS": "500"})
    assert server.env["RAY_SERVE_CONTROL_LOOP_INTERVAL_S"] == "0.5"
    assert server.env["RAY_SERVE_METRICS_EXPORT_INTERVAL_MS"] == "500"
