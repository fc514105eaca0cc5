"""Issue 11's attacks, by a black-box client on loopback, on both paths into the server.

    .venv/bin/python -m bench.attacks [--out bench/results/attacks.json]

Starts `serve run serve_config.yaml` (free port, as scripts/serve runs it) and the bundled
nginx (configs/nginx) in front of it, then, on each path (Ray's proxy directly; nginx):
a 480 MB chunked upload, 40 uploads of one key that declare 1,000 bytes and stop after
150, and a key-less request with a 64 MB header (last: it raises the peaks measured).
Meanwhile /health is asked every 0.1 s.
For each attack: what the attacker got back, the slowest /health, another key's submit
time (stalls), and the peak memory of Ray's HTTP proxy and the gateways. Then fairness:
another key's short clip, idle and while one key's 7,000 s silent file decodes.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from bench.server import bench_server
from tests.attacks import (
    JFK,
    HealthProbe,
    answers_now,
    big_header,
    chunked_upload,
    stalled_upload,
    status_of,
    submit_as,
)
from tests.audio_util import silent_flac
from tests.serve.launcher import (
    NginxFront,
    _ancestors,
)

ROOT = Path(__file__).resolve().parent.parent

KEY, OTHER = "bench-attack-key-1", "bench-attack-key-2"


def memory_mib(root: int, *names: str) -> dict[str, float]:
    """Peak resident memory (VmHWM) of Ray's proxy and gateways (or ``names``) under ``root``."""
    out: dict[str, float] = {}
    for name in names or ("ProxyActor", "ServeReplica:whisper:Gateway"):
        found = subprocess.run(["pgrep", "-f", name], capture_output=True, text=True).stdout
        peak = 0.0
        for pid in (int(p) for p in found.split()):
            if root not in _ancestors(pid):
                continue
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) / 1024)
        out[name] = round(peak, 1)
    return out


def stalled(port: int, url: str) -> dict[str, Any]:
    socks = [stalled_upload(port, KEY) for _ in range(40)]
    time.sleep(1.0)
    codes = answers_now(socks)
    started = time.monotonic()
    other = submit_as(url, OTHER, timeout=120)
    other_s = time.monotonic() - started
    for sock in socks:
        sock.close()
    return {
        "answers_after_1s": {str(c or "still open"): codes.count(c) for c in sorted(set(codes))},
        "other_key_submit": other.status_code,
        "other_key_submit_s": round(other_s, 3),
    }


def job_latency(url: str, key: str, audio: bytes, **fields: str) -> tuple[float, str]:
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}) as c:
        started = time.monotonic()
        job = c.post("/transcribe", files={"file": ("a.flac", audio)}, data=fields, timeout=120)
        job.raise_for_status()
        job_id = job.json()["job_id"]
        while True:
            body = c.get(f"/transcribe/{job_id}", params={"wait": 30}, timeout=60).json()
            if body["status"] in ("done", "error"):
                return time.monotonic() - started, body["status"]


def fairness(url: str, root: int) -> dict[str, Any]:
    """Issue 11: one key's 7,000 s silent file (vad_filter=false: 234 windows to decode)
    delayed another key's 2 s clip to 123.5 s. Here: that clip's latency idle, then while
    the long file decodes, and the Whisper replica's peak memory."""
    clip = JFK.read_bytes()
    idle = [job_latency(url, OTHER, clip)[0] for _ in range(3)]
    long_audio = silent_flac(7000)
    result: dict[str, Any] = {"long_file_bytes": len(long_audio)}
    holder: dict[str, Any] = {}

    def long_job() -> None:
        holder["s"], holder["status"] = job_latency(url, KEY, long_audio, vad_filter="false")

    thread = threading.Thread(target=long_job)
    thread.start()
    time.sleep(5.0)  # the long file is decoded and cut; its windows fill the queue
    busy = [job_latency(url, OTHER, clip)[0] for _ in range(3)]
    thread.join()
    result.update(
        {
            "other_key_clip_idle_s": [round(t, 2) for t in idle],
            "other_key_clip_during_long_file_s": [round(t, 2) for t in busy],
            "ratio_to_idle": round(statistics.median(busy) / statistics.median(idle), 2),
            "long_file_s": round(holder["s"], 1),
            "long_file_status": holder["status"],
            "transcriber_peak_mib": memory_mib(root, "ServeReplica:whisper:Transcriber"),
        }
    )
    print("fairness", json.dumps(result), flush=True)
    return result


def attack(name: str, port: int, url: str, root: int) -> dict[str, Any]:
    before = memory_mib(root)
    with HealthProbe(url) as probe:
        started = time.monotonic()
        if name == "header_64MB":
            answer = big_header(port, 64)
            result: dict[str, Any] = {"answer": status_of(answer)}
        elif name == "chunked_480MB":
            answer, sent = chunked_upload(port, KEY, 480)
            result = {"answer": status_of(answer), "mb_sent_before_answer": sent}
        else:
            result = stalled(port, url)
        result["attack_s"] = round(time.monotonic() - started, 3)
    result["health_max_s"] = round(max(probe.latencies), 3)
    result["health_codes"] = sorted(str(c) for c in probe.codes)
    after = memory_mib(root)
    result["peak_mib_growth"] = {k: round(after[k] - before[k], 1) for k in after}
    print(name, json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "attacks.json")
    parser.add_argument(
        "--only-fairness",
        action="store_true",
        help="run the fairness part alone and replace it in --out (the attacks' results stay)",
    )
    args = parser.parse_args()
    server = bench_server(
        f"{KEY},{OTHER}",
        {
            "WHISPER_CPU_THREADS": "2",
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            # Below the default (64 per gateway), so that 40 stalled uploads meet it.
            "MAX_UPLOADS_PER_KEY": "8",
        },
        prefix="attacks-",
    )
    server.start()
    front = NginxFront(server.workdir, server.port)
    front.start()
    assert server.proc is not None
    root = server.proc.pid
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, "
        f"{subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()} cores",
        "paths": {},
    }
    if args.only_fairness and args.out.exists():
        results = json.loads(args.out.read_text())
    try:
        for path, target_port, url in (
            ()
            if args.only_fairness
            else (
                ("ray_proxy", server.port, server.url),
                ("nginx", front.port, front.url),
            )
        ):
            results["paths"][path] = {
                name: attack(name, target_port, url, root)
                for name in ("chunked_480MB", "stalled_uploads_40", "header_64MB")
            }
            time.sleep(2)
        results["fairness"] = fairness(server.url, root)
        results["fairness"]["date"] = time.strftime("%Y-%m-%d")
    finally:
        front.stop()
        server.stop()
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
