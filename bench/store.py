"""The job store on SQLite and on PostgreSQL, in the same run: what one job's records
cost (insert, claim, progress, finish) and gateways racing for the queue.

    .venv/bin/python -m bench.store [--jobs 1000] [--gateways 4]

PostgreSQL is a server of the run's own (tests/postgres.py: Debian's package, on
loopback, fsync off as in the tests, so these are the store's costs, not a disk's).
Writes bench/results/store.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.run import machine
from serve_app.store import JobStore, open_store
from tests.postgres import PostgresServer

RESULTS = Path(__file__).parent / "results"


def add(store: JobStore, job_id: str, audio: Path) -> None:
    store.create(
        job_id=job_id, owner="bench", size_bytes=audio.stat().st_size, duration=5.0,
        audio_path=str(audio), options={}, deadline_s=3600, max_active=1_000_000,
    )  # fmt: skip


def one_job_each(store: JobStore, jobs: int, audio: Path) -> dict[str, float]:
    """Milliseconds per job for the records a job's life writes, one after the other."""
    took: list[float] = []
    for i in range(jobs):
        begin = time.perf_counter()
        add(store, f"seq-{i}", audio)
        job = store.claim(lease_s=60, job_id=f"seq-{i}")
        assert job is not None
        store.set_progress(job.id, attempt=job.attempts, progress=0.5)
        store.finish(job.id, attempt=job.attempts, result={"text": "x"})
        took.append((time.perf_counter() - begin) * 1000)
    took.sort()
    return {
        "p50_ms": round(statistics.median(took), 2),
        "p99_ms": round(took[int(0.99 * (len(took) - 1))], 2),
    }


def race(url: str, jobs: int, gateways: int, audio: Path) -> dict[str, Any]:
    """``gateways`` stores claim and finish ``jobs`` queued jobs at once."""
    writer = open_store(url)
    for i in range(jobs):
        add(writer, f"race-{i}", audio)
    stores = [open_store(url) for _ in range(gateways)]
    claimed: list[list[str]] = [[] for _ in stores]
    start = threading.Barrier(gateways + 1)

    def work(n: int) -> None:
        start.wait()
        while (job := stores[n].claim(lease_s=60)) is not None:
            claimed[n].append(job.id)
            stores[n].finish(job.id, attempt=job.attempts, result={})

    threads = [threading.Thread(target=work, args=(n,)) for n in range(gateways)]
    for t in threads:
        t.start()
    start.wait()
    begin = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - begin
    every = [j for mine in claimed for j in mine]
    return {
        "jobs": jobs,
        "gateways": gateways,
        "claimed_twice": len(every) - len(set(every)),
        "never_claimed": jobs - len(set(every)),
        "per_gateway": [len(mine) for mine in claimed],
        "wall_s": round(wall, 3),
        "jobs_per_s": round(jobs / wall, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--gateways", type=int, default=4)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="whisper-bench-store-"))
    audio = work / "clip.audio"
    audio.write_bytes(b"\0" * 160_000)  # a 5 s clip's worth of bytes (PostgreSQL keeps a copy)
    postgres = PostgresServer()
    postgres.start()
    try:
        urls = {
            "sqlite": (lambda: f"sqlite:///{work / f'jobs-{time.monotonic_ns()}.db'}"),
            "postgresql": postgres.database,
        }
        out: dict[str, Any] = {
            "date": time.strftime("%Y-%m-%d"),
            "machine": machine(),
            "postgresql": str(postgres.bin.parent.name),
            "backends": {},
        }
        for name, new in urls.items():
            sequential = one_job_each(open_store(new()), min(args.jobs, 500), audio)
            raced = race(new(), args.jobs, args.gateways, audio)
            out["backends"][name] = {"one_job_records": sequential, "race": raced}
            print(name, sequential, raced)
    finally:
        postgres.remove()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "store.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
