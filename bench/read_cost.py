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
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import time
from pathlib import Path
from typing import Any

import httpx

from bench.checkout import checkout, revision
from bench.cpu import cpu_under, spent
from bench.run import RESULTS, machine
from bench.server import bench_server
from tests.serve.launcher import ROOT, all_pids, proc_stat

KEY = "bench-read-key"
CLIP = ROOT / "tests" / "data" / "jfk.flac"


def in_session(leader: int) -> list[int]:
    """Processes of the session ``leader`` started (``start_new_session``)."""
    return [pid for pid in all_pids() if (stat := proc_stat(pid)) and int(stat[1][3]) == leader]


def measure(root: Path, reads: int, env: dict[str, str]) -> dict[str, Any]:
    """One server from checkout ``root``, ``env`` added: CPU milliseconds a read, by role."""
    server = bench_server(
        KEY,
        # One client reads as fast as it can: the cost of a read let through, not a 429.
        {"STATUS_READS_PER_S_PER_KEY": "100000", **env},
        root=root,
        prefix="whisper-readcost-",
    )
    server.start()
    assert server.proc is not None
    group = server.proc.pid
    try:
        with httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60
        ) as c:
            job = c.post("/transcribe", files={"file": ("jfk.flac", CLIP.read_bytes())}).json()
            url = f"/transcribe/{job['job_id']}"
            assert c.get(url, params={"wait": 60}).json()["status"] == "done"
            time.sleep(5)  # the start's own work settles
            for _ in range(50):
                c.get(url)
            before = cpu_under(group)
            started = time.perf_counter()
            for _ in range(reads):
                c.get(url).raise_for_status()
            wall = time.perf_counter() - started
            after = cpu_under(group)
    finally:
        server.stop()
        # Ray's HAProxy mode (--env RAY_SERVE_ENABLE_HA_PROXY=1) leaves its haproxy
        # running after `serve run` exits, in a process group of its own but still in
        # the session `serve run` leads: only this server's processes are in it.
        for pid in in_session(group):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    by_role = spent(before, after)
    per_read = {role: round(1000 * s / reads, 2) for role, s in by_role.items() if s > 0}
    return {
        "cpu_ms_per_read": round(1000 * sum(by_role.values()) / reads, 2),
        "wall_ms_per_read": round(1000 * wall / reads, 2),
        "by_process": per_read,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--name", default="read-cost", help="results file name")
    parser.add_argument("--reads", type=int, default=1500)
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
                run = measure(root, args.reads, envs[label])
                runs[label].append(run)
                print(i, label, json.dumps(run), flush=True)
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "reads_per_server": args.reads,
        "revisions": revisions,
        "env": extra,
        "runs": runs,
        "median_cpu_ms_per_read": {
            label: statistics.median(r["cpu_ms_per_read"] for r in rs) for label, rs in runs.items()
        },
    }
    for beside in (label for label in runs if label != "this"):
        # Pairwise: each run of the working tree against the other run of its round.
        result[f"{beside}_vs_this_per_pair"] = [
            round(b["cpu_ms_per_read"] / a["cpu_ms_per_read"], 3)
            for a, b in zip(runs["this"], runs[beside], strict=True)
        ]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))


if __name__ == "__main__":
    main()
