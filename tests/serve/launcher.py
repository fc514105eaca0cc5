"""Start and stop `serve run CONFIG` as a user does (used by the serve tests and bench/)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).parents[2]


class LaunchError(RuntimeError):
    """The server did not come up; the message holds the end of its output."""


def replica_pids(deployment: str, under: int, app: str = "whisper") -> list[int]:
    """Processes of a deployment's replicas started under process ``under`` (our
    `serve run`: Ray's raylet and its workers are its descendants), never another
    server's on the same machine."""
    found = subprocess.run(
        ["pgrep", "-f", f"ServeReplica:{app}:{deployment}"], capture_output=True, text=True
    )
    return [int(p) for p in found.stdout.split() if under in _ancestors(int(p))]


def _ancestors(pid: int) -> list[int]:
    chain = []
    while pid > 1:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])  # the field after the name: ppid
        chain.append(pid)
    return chain


def port_taken(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def config_on_port(
    workdir: Path,
    port: int,
    config: Path = ROOT / "serve_config.yaml",
    whisper: dict[str, Any] | None = None,
) -> Path:
    """serve_config.yaml with another HTTP port (a server beside the default one), and
    ``whisper`` merged into the Whisper deployment's user_config."""
    data = yaml.safe_load(config.read_text())
    data.setdefault("http_options", {})["port"] = port
    for app in data.get("applications", []):
        for deployment in app.get("deployments", []):
            if (
                whisper
                and "user_config" in deployment
                and "max_batch_size" in deployment["user_config"]
            ):
                deployment["user_config"].update(whisper)
    out = workdir / f"serve_config.{port}.yaml"
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


class ServeProcess:
    """A `serve run` child process in its own process group, its environment and its logs."""

    def __init__(
        self, workdir: Path, env: dict[str, str], *, port: int = 8000, config: Path | None = None
    ) -> None:
        self.workdir = workdir
        self.port = port
        self.config = config or ROOT / "serve_config.yaml"
        self.url = f"http://127.0.0.1:{port}"
        self.output = workdir / "serve-run.log"
        self.ray_logs: list[Path] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")},
            **env,
        }

    def start(self, timeout: float = 240) -> None:
        if port_taken(self.port):
            raise LaunchError(f"port {self.port} is taken: stop the server there first")
        serve_bin = Path(sys.executable).parent / "serve"
        out = self.output.open("ab")
        self.proc = subprocess.Popen(
            [str(serve_bin), "run", str(self.config)],
            cwd=ROOT,
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise LaunchError(
                    f"serve run exited ({self.proc.returncode}):\n{self.output.read_text()[-3000:]}"
                )
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    self.ray_logs.append(Path("/tmp/ray/session_latest").resolve() / "logs")
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        self.stop()
        raise LaunchError(f"not healthy after {timeout} s:\n{self.output.read_text()[-3000:]}")

    def stop(self) -> None:
        """SIGTERM (a background `serve run` ignores SIGINT): Serve and Ray shut down."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self._wait_port_free()

    def kill(self) -> None:
        """SIGKILL the whole server: serve run, Ray and every replica, no cleanup."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._wait_port_free()

    def restart(self) -> None:
        self.stop()
        self.start()

    def _wait_port_free(self) -> None:
        # Ray's proxy lets go of the port a moment after `serve run` exits.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and port_taken(self.port):
            time.sleep(0.5)

    def log_files(self) -> list[Path]:
        files = [self.output]
        for logs in self.ray_logs:
            files += [p for p in logs.rglob("*") if p.is_file()]
        return files
