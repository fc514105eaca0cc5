"""What one status read costs the server in CPU, from /proc: the whole `serve run` tree.

    .venv/bin/python -m bench.read_cost --name read-cost-dec02 [--against REV]

Starts the server (`serve run serve_config.yaml` on a free port), transcribes one clip of
real speech, then reads the done job ``--reads`` times, one client, no ``wait``, and
takes the CPU time (user + system) every process of the server spent meanwhile: Ray's
proxy, the gateways, the controller, GCS, raylet, agents. With ``--against REV`` a
checkout of that revision runs too, and with ``--env NAME=VALUE`` the working tree with
that in the server's environment (Ray Serve's flags), alternating ``--repeat`` times
each (the machine's speed drifts; compare within a round). Writes bench/results/<name>.json;
docs/benchmarks.md quotes it.

With ``--polling`` it measures what seed-style clients of unfinished jobs cost instead:
``--clients`` jobs are submitted while the Whisper replica is stopped (SIGSTOP, so they stay
``processing`` and no decode shares the machine), then each client polls its job 4 times a
second without ``wait`` for ``--seconds``: the reads the server answered a second, and the CPU
it spent a second and an answered read, by role, over what it spent idle just before;
``--wait N``: the same clients long-polling instead.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench.checkout import checkout, revision
from bench.cpu import cpu_under, spent
from bench.run import RESULTS, SEED_POLL_EVERY_S, machine
from bench.server import bench_server
from tests.serve.launcher import ROOT, ServeProcess, all_pids, proc_stat, replica_pids

KEY = "bench-read-key"
CLIP = ROOT / "tests" / "data" / "jfk.flac"


def in_session(leader: int) -> list[int]:
    """Processes of the session ``leader`` started (``start_new_session``)."""
    return [pid for pid in all_pids() if (stat := proc_stat(pid)) and int(stat[1][3]) == leader]


@contextlib.contextmanager
def serving(root: Path, env: dict[str, str]) -> Iterator[ServeProcess]:
    """A server from checkout ``root``, ``env`` added, and all of it gone afterwards."""
    server = bench_server(
        KEY,
        # Clients read as fast as they do: the cost of a read let through, not a 429.
        {"STATUS_READS_PER_S_PER_KEY": "100000", **env},
        root=root,
        prefix="whisper-readcost-",
    )
    one_transcriber(server.config)
    server.start()
    assert server.proc is not None
    group = server.proc.pid
    try:
        yield server
    finally:
        server.stop()
        # Ray's HAProxy mode (--env RAY_SERVE_ENABLE_HA_PROXY=1) leaves its haproxy
        # running after `serve run` exits, in a process group of its own but still in
        # the session `serve run` leads: only this server's processes are in it.
        for pid in in_session(group):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def one_transcriber(config: Path) -> None:
    """No second Whisper replica: 32 stopped jobs reach the autoscaler's target, and a
    replica starting up (a core for its model) is not what a read costs."""
    data = yaml.safe_load(config.read_text())
    for app in data["applications"]:
        for deployment in app["deployments"]:
            if "autoscaling_config" in deployment:
                deployment["autoscaling_config"]["max_replicas"] = 1
    config.write_text(yaml.safe_dump(data, sort_keys=False))


def client(server: ServeProcess) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)


def measure(root: Path, reads: int, env: dict[str, str]) -> dict[str, Any]:
    """One server: CPU milliseconds a read of a done job, by role."""
    with serving(root, env) as server, client(server) as c:
        assert server.proc is not None
        job = c.post("/transcribe", files={"file": ("jfk.flac", CLIP.read_bytes())}).json()
        url = f"/transcribe/{job['job_id']}"
        assert c.get(url, params={"wait": 60}).json()["status"] == "done"
        time.sleep(5)  # the start's own work settles
        for _ in range(50):
            c.get(url)
        before = cpu_under(server.proc.pid)
        started = time.perf_counter()
        for _ in range(reads):
            c.get(url).raise_for_status()
        wall = time.perf_counter() - started
        by_role = spent(before, cpu_under(server.proc.pid))
    per_read = {role: round(1000 * s / reads, 2) for role, s in by_role.items() if s > 0}
    return {
        "cpu_ms_per_read": round(1000 * sum(by_role.values()) / reads, 2),
        "wall_ms_per_read": round(1000 * wall / reads, 2),
        "by_process": per_read,
    }


def measure_polling(
    root: Path, clients: int, seconds: float, wait: float, env: dict[str, str]
) -> dict[str, Any]:
    """One server: ``clients`` seed-style pollers of unfinished jobs for ``seconds`` (with
    ``wait``: long polls of that many seconds, one after another)."""
    with serving(root, env) as server, client(server) as c:
        assert server.proc is not None
        group = server.proc.pid
        assert c.post("/transcribe", files={"file": ("jfk.flac", CLIP.read_bytes())}).is_success
        (whisper,) = replica_pids("Transcriber", group)
        os.kill(whisper, signal.SIGSTOP)
        try:
            jobs = [
                c.post("/transcribe", files={"file": ("jfk.flac", CLIP.read_bytes())}).json()
                for _ in range(clients)
            ]
            time.sleep(5)  # the submits' own work settles
            answered = [0] * clients
            params = {"wait": wait} if wait else {}

            def poll(n: int) -> None:
                url = f"/transcribe/{jobs[n]['job_id']}"
                with client(server) as mine:
                    while time.perf_counter() < until:
                        body = mine.get(url, params=params).json()
                        assert body["status"] in ("queued", "processing"), body
                        answered[n] += time.perf_counter() < until
                        if not wait:
                            time.sleep(SEED_POLL_EVERY_S)

            threads = [threading.Thread(target=poll, args=(n,)) for n in range(clients)]
            before = cpu_under(group)
            time.sleep(seconds)  # what the server spends with no reads, to subtract
            idle = spent(before, cpu_under(group))
            before, until = cpu_under(group), time.perf_counter() + seconds
            for t in threads:
                t.start()
            time.sleep(seconds)
            by_role = spent(before, cpu_under(group))
            for t in threads:  # a long poll still held ends at its wait
                t.join()
        finally:
            os.kill(whisper, signal.SIGCONT)
    reads = sum(answered)
    polling = sum(by_role.values()) - sum(idle.values())
    return {
        "reads_per_s": round(reads / seconds, 2),
        # Over what the same server spent idle just before (Ray's own loops: 0.1-0.15 cores).
        "cpu_ms_per_s": round(1000 * polling / seconds, 1),
        "cpu_ms_per_read": round(1000 * polling / reads, 2) if reads else None,
        "idle_cpu_ms_per_s": round(1000 * sum(idle.values()) / seconds, 1),
        "idle_by_process_ms_per_s": {r: round(1000 * s / seconds, 1) for r, s in idle.items()},
        "by_process_ms_per_s": {
            r: round(1000 * (s - idle.get(r, 0.0)) / seconds, 1) for r, s in by_role.items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--name", default="read-cost", help="results file name")
    parser.add_argument("--reads", type=int, default=1500)
    parser.add_argument("--polling", action="store_true", help="pollers of unfinished jobs")
    parser.add_argument("--clients", type=int, default=32, help="with --polling")
    parser.add_argument("--seconds", type=float, default=25, help="with --polling")
    parser.add_argument("--wait", type=float, default=0, help="with --polling: long polls")
    parser.add_argument("--repeat", type=int, default=3, help="servers started per checkout")
    parser.add_argument("--against", help="a git revision to measure beside the working tree")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="also measure the working tree with this in the server's environment",
    )
    args = parser.parse_args()
    extra = dict(e.split("=", 1) for e in args.env)
    roots = {"this": ROOT}
    envs: dict[str, dict[str, str]] = {"this": {}}
    if extra:
        roots["this+env"], envs["this+env"] = ROOT, extra
    with contextlib.ExitStack() as stack:
        if args.against:
            roots["against"], envs["against"] = stack.enter_context(checkout(args.against)), {}
        revisions = {label: revision(root) for label, root in roots.items()}
        runs: dict[str, list[dict[str, Any]]] = {label: [] for label in roots}
        for i in range(args.repeat):
            for label, root in roots.items():
                run = (
                    measure_polling(root, args.clients, args.seconds, args.wait, envs[label])
                    if args.polling
                    else measure(root, args.reads, envs[label])
                )
                runs[label].append(run)
                print(i, label, json.dumps(run), flush=True)
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "measured": (
            f"{args.clients} clients polling unfinished jobs "
            + (f"with wait={args.wait:g}" if args.wait else "4/s")
            + f" for {args.seconds:g} s"
            if args.polling
            else f"{args.reads} reads of a done job, one client"
        ),
        "revisions": revisions,
        "env": extra,
        "runs": runs,
    }
    for figure in ("cpu_ms_per_read", "cpu_ms_per_s", "reads_per_s"):
        if runs["this"][0].get(figure) is not None:
            result[f"median_{figure}"] = {
                label: statistics.median(r[figure] for r in rs) for label, rs in runs.items()
            }
    for beside in (label for label in runs if label != "this"):
        # Pairwise: each run of the working tree against the other run of its round.
        figure = "cpu_ms_per_s" if args.polling else "cpu_ms_per_read"
        result[f"{beside}_vs_this_per_pair"] = [
            round(b[figure] / a[figure], 3) for a, b in zip(runs["this"], runs[beside], strict=True)
        ]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))


if __name__ == "__main__":
    main()
