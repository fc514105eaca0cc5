"""The stream of bench/run.py, this tree against another revision, a server for each in turn.

    .venv/bin/python -m bench.stream_ab --name NAME --against REV [--rounds 3] [--clips 4]

bench/run.py runs all its streams on one server: two revisions compared by two runs of it
are most of an hour apart, on a machine whose speed drifts by 20-35%. Here each round
starts a server of each checkout in turn (packing on, as `bench/run.py --pack`) and runs
the stream on it once long-polling and once polling 4 times a second without ``wait``:
32 clients of one key, each sending ``--clips`` clips one after another. Plain
faster-whisper decodes the 32 clips before and after. Writes bench/results/<name>.json,
which docs/benchmarks.md quotes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from pathlib import Path
from typing import Any

import httpx

from bench.checkout import checkout, revision
from bench.clips import Clip, make_clips
from bench.run import (
    KEY,
    RESULTS,
    SEED_POLL_EVERY_S,
    machine,
    run_clients,
    run_plain,
    stream_summary,
    streamed,
    transcribe_http,
    with_cpu,
)
from bench.server import bench_server
from tests.serve.launcher import ROOT


def streams_on(
    root: Path, clips: list[Clip], per_client: int, threads: int, whisper: dict[str, Any]
) -> list[dict[str, Any]]:
    """One server from checkout ``root``: the stream long-polling, then polling.
    ``whisper``: added to its Whisper deployment's user_config."""
    server = bench_server(
        KEY,
        {"WHISPER_CPU_THREADS": str(threads)},
        root=root,
        whisper={"pack_short_jobs": True, **whisper},
        prefix="whisper-stream-ab-",
    )
    server.start()
    assert server.proc is not None
    try:
        with httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=120
        ) as c:
            transcribe_http(c, clips[0], [])  # warm up
            first = c.post("/transcribe", files={"file": ("a.wav", clips[0].path.read_bytes())})
            done_job = first.json()["job_id"]
            c.get(f"/transcribe/{done_job}", params={"wait": 30})
        order = streamed(clips, per_client)
        out = []
        for poll_every in (None, SEED_POLL_EVERY_S):
            run = with_cpu(
                server.proc.pid, run_clients, server.url, order, len(clips), [KEY], done_job,
                poll_every,
            )  # fmt: skip
            run["clips_per_client"] = per_client
            out.append(run)
            print(root.name, run["polls_per_s"], run["wall_s"], flush=True)
        return out
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--name", required=True, help="results file name")
    parser.add_argument("--against", required=True, help="the git revision to compare with")
    parser.add_argument("--rounds", type=int, default=3, help="servers started per checkout")
    parser.add_argument("--clips", type=int, default=4, help="clips each client sends")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--whisper",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="this tree's server only: a Whisper user_config setting (a number)",
    )
    args = parser.parse_args()
    mine = {name: float(value) for name, value in (w.split("=", 1) for w in args.whisper)}
    clips = make_clips(32)
    plain = [run_plain(clips, args.threads)]
    streams: dict[str, list[dict[str, Any]]] = {"this": [], "against": []}
    with contextlib.ExitStack() as stack:
        roots = {"this": ROOT, "against": stack.enter_context(checkout(args.against))}
        revisions = {label: revision(root) for label, root in roots.items()}
        for _ in range(args.rounds):
            for label, root in roots.items():
                whisper = mine if label == "this" else {}
                streams[label] += streams_on(root, clips, args.clips, args.threads, whisper)
    plain.append(run_plain(clips, args.threads))
    wall = statistics.mean(p["wall_s"] for p in plain)
    summary: dict[str, Any] = {label: stream_summary(runs, wall) for label, runs in streams.items()}
    # Round by round, this tree's stream against the other's, each way (> 1: faster).
    for polls in (None, round(1 / SEED_POLL_EVERY_S, 2)):
        mine, theirs = ([r for r in streams[k] if r["polls_per_s"] == polls] for k in streams)
        key = "this_vs_against" + ("_polling" if polls else "_long_polls")
        summary[key] = [
            round(b["wall_s"] / a["wall_s"], 2) for a, b in zip(mine, theirs, strict=True)
        ]
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "model": "tiny.en int8 (bundled)",
        "revisions": revisions,
        "this_whisper_config": mine,
        "clips_per_client": args.clips,
        "plain_wall_s": [p["wall_s"] for p in plain],
        "streams": streams,
        "summary": summary,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
