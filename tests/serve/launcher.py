"""Start and stop `serve run CONFIG` as a user does (used by the serve tests and bench/)."""

from __future__ import annotations

import os
import shutil
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


def proc_stat(pid: int) -> tuple[str, list[str]] | None:
    """/proc/PID/stat: the process's name, and the fields after it (state, ppid, pgrp,
    session, ..., utime at 11, stime at 12); None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()


def _ancestors(pid: int) -> list[int]:
    chain = []
    while pid > 1:
        stat = proc_stat(pid)
        if stat is None:
            break
        pid = int(stat[1][1])  # ppid
        chain.append(pid)
    return chain


def ray_env(root: Path = ROOT) -> dict[str, str]:
    """configs/ray.env of checkout ``root`` (Ray's process-wide settings, as scripts/serve
    exports them); empty for a revision without it."""
    path = root / "configs" / "ray.env"
    if not path.exists():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        name, sep, value = line.strip().partition("=")
        if sep and not name.startswith("#"):
            out[name] = value
    return out


def starting_env(root: Path = ROOT) -> dict[str, str]:
    """The environment a server of its own starts Ray in: ``root``'s configs/ray.env, then
    this process's environment (which wins), without RAY_ADDRESS (no cluster to join)."""
    here = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    return {**ray_env(root), **here}


def all_pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def processes_under(under: int) -> list[int]:
    """``under`` and every process descending from it (our `serve run`), from /proc."""
    return [pid for pid in all_pids() if pid == under or under in _ancestors(pid)]


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
        self,
        workdir: Path,
        env: dict[str, str],
        *,
        port: int = 8000,
        config: Path | None = None,
        root: Path = ROOT,
    ) -> None:
        """``root``: the checkout whose code `serve run` imports (bench/read_cost.py runs
        another revision's beside this one's)."""
        self.workdir = workdir
        self.port = port
        self.root = root
        self.config = config or root / "serve_config.yaml"
        self.url = f"http://127.0.0.1:{port}"
        self.output = workdir / "serve-run.log"
        self.ray_logs: list[Path] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self.env = {**starting_env(root), **env}

    def start(self, timeout: float = 240) -> None:
        if port_taken(self.port):
            raise LaunchError(f"port {self.port} is taken: stop the server there first")
        serve_bin = Path(sys.executable).parent / "serve"
        out = self.output.open("ab")
        self.proc = subprocess.Popen(
            [str(serve_bin), "run", str(self.config)],
            cwd=self.root,
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


def free_port() -> int:
    """A TCP port free on loopback now (8000 may be another server's)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NginxFront:
    """The bundled reverse proxy (configs/nginx) in front of a server, as docker-compose runs it.

    The template is rendered as the nginx image does (``${PROXY_*}`` from the
    environment) into a minimal nginx.conf under ``workdir``.
    """

    TEMPLATE = ROOT / "configs" / "nginx" / "default.conf.template"

    def __init__(self, workdir: Path, upstream_port: int, max_body: str = "26m") -> None:
        self.dir = workdir / "nginx"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.values = {
            "PROXY_MAX_BODY": max_body,
            "PROXY_UPSTREAM": f"127.0.0.1:{upstream_port}",
            "PROXY_LISTEN": f"127.0.0.1:{self.port}",
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        for sub in ("logs", "temp"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        site = self.TEMPLATE.read_text()
        for name, value in self.values.items():
            site = site.replace("${" + name + "}", value)
        (self.dir / "site.conf").write_text(site)
        temp = self.dir / "temp"
        (self.dir / "nginx.conf").write_text(
            f"pid {self.dir}/nginx.pid;\nerror_log {self.dir}/logs/error.log warn;\n"
            "worker_processes 1;\nevents { worker_connections 1024; }\n"
            f"http {{\n  access_log off;\n  client_body_temp_path {temp}/body;\n"
            f"  proxy_temp_path {temp}/proxy;\n  fastcgi_temp_path {temp}/fastcgi;\n"
            f"  uwsgi_temp_path {temp}/uwsgi;\n  scgi_temp_path {temp}/scgi;\n"
            f"  include {self.dir}/site.conf;\n}}\n"
        )
        self.proc = subprocess.Popen(
            [nginx, "-p", str(self.dir), "-c", str(self.dir / "nginx.conf"), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=(self.dir / "logs" / "stderr.log").open("ab"),
            start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while not port_taken(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise LaunchError(
                    "nginx did not start:\n" + (self.dir / "logs" / "stderr.log").read_text()
                )
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=10)


def listening(under: int) -> list[tuple[str, int, str]]:
    """TCP sockets listening in processes started under process ``under`` (our `serve
    run`): (address, port, process name), from /proc (no tool needed)."""
    owners: dict[str, str] = {}
    for pid in processes_under(under):
        proc = Path(f"/proc/{pid}")
        try:
            name = (proc / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            for fd in (proc / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    owners[target[8:-1]] = name
        except OSError:
            continue
    found = []
    for table, width in (("tcp", 8), ("tcp6", 32)):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in owners:  # 0A: LISTEN
                continue
            hex_address, hex_port = fields[1].split(":")
            found.append((_address(hex_address, width), int(hex_port, 16), owners[fields[9]]))
    return found


def _address(hex_address: str, width: int) -> str:
    raw = bytes.fromhex(hex_address)
    # /proc/net shows each 32-bit word in host (little-endian) order.
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    if width == 8:
        return socket.inet_ntop(socket.AF_INET, words)
    address = socket.inet_ntop(socket.AF_INET6, words)
    return address.removeprefix("::ffff:")
