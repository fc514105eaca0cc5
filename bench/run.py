"""Throughput benchmark: plain faster-whisper vs this engine vs the whole server, one run.

    scripts/bench            (installs what it needs, then runs this)

On the same 32 short clips, with the same bundled tiny.en (int8) and threads:
  (a) plain faster-whisper, sequential ``WhisperModel.transcribe`` with its defaults;
  (b) this project's engine in-process, no Ray (batching and packing), on the clips in
      their own order and two shuffled ones (packing follows the order);
  (c) the whole server (`serve run`, HTTP, SQLite) under 1, 8 and 32 concurrent clients,
      and 32 clients each with its own API key (no packing across owners); then a stream:
      32 clients that each send ``--stream`` clips one after another (each clip of the set
      as many times), long-polling, then polling as the seed's clients do.
Then an idle single-clip latency check, and sustained load to watch autoscaling.
Writes bench/results/<name>.json and .png; docs/benchmarks.md quotes them.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import random
import re
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import jiwer

from bench.clips import Clip, make_clips
from bench.cpu import cpu_under, spent
from bench.packing import measure as measure_packing
from bench.server import bench_server
from deployments.assemble import assemble
from deployments.engine import WhisperEngine
from deployments.interface import EngineConfig, Packing
from deployments.models import resolve_model
from deployments.protocol import TranscribeOptions
from tests.audio_util import words
from tests.serve.launcher import replica_pids

RESULTS = Path(__file__).parent / "results"
KEY = "bench-key"
C32_ROUNDS = 3
# What the Transcriber logs when packing's guard decodes clips again alone
# (deployments/engine.py); the bench counts it per run from the server's log.
ALONE_LINE = re.compile(r"(\d+) packed chunks to decode alone")
# The poll-latency probe's pace: a client checking 4 times a second (it loads the
# server it measures, so not faster).
POLL_EVERY_S = 0.25
# The seed's clients poll a job several times a second without ?wait.
SEED_POLL_EVERY_S = 0.25
# The engine baseline runs the clips in their own order and in shuffled ones.
ENGINE_ORDERS = 3
# Clips each of the stream's 32 clients sends in a row (--stream), and how many times
# the stream runs each way, alternating (--stream-rounds).
STREAM_CLIPS = 4
STREAM_ROUNDS = 2


def wer_of(clips: list[Clip], texts: list[str]) -> dict[str, float]:
    refs = [words(c.text) for c in clips]
    hyps = [words(t) for t in texts]
    return {
        "corpus": round(jiwer.wer(refs, hyps), 4),
        "mean_per_clip": round(
            statistics.mean(jiwer.wer(r, h) for r, h in zip(refs, hyps, strict=True)), 4
        ),
    }


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 4)


def run_plain(
    clips: list[Clip], threads: int, *, device: str = "cpu", compute_type: str = "int8"
) -> dict[str, Any]:
    from faster_whisper import WhisperModel

    model = WhisperModel(
        resolve_model("tiny.en", cache_dir="data/models"),
        device=device,
        compute_type=compute_type,
        cpu_threads=threads,
    )
    list(model.transcribe(str(clips[0].path))[0])  # warm up
    begin = time.perf_counter()
    texts = ["".join(s.text for s in model.transcribe(str(c.path))[0]) for c in clips]
    wall = time.perf_counter() - begin
    per_clip = []
    for clip in clips[:5]:
        t = time.perf_counter()
        list(model.transcribe(str(clip.path))[0])
        per_clip.append(time.perf_counter() - t)
    return {"wall_s": round(wall, 3), "wer": wer_of(clips, texts), "single_clip_s": per_clip}


def run_engine(
    clips: list[Clip],
    threads: int,
    *,
    packing: bool,
    batch: int,
    device: str = "cpu",
    orders: int = ENGINE_ORDERS,
) -> dict[str, Any]:
    """The engine in-process on the clips in their own order, then in shuffled orders.

    Which clips share a window depends on their order (the server packs them as
    they arrive), and so does whether a window loops and is decoded again: the
    wall time is the mean over the orders.
    """
    engine = WhisperEngine(EngineConfig(cpu_threads=threads, device=device))  # type: ignore[arg-type]
    engine.set_packing(Packing(enabled=packing))
    audio = [c.path.read_bytes() for c in clips]
    engine.run_batch(engine.prepare(audio[0], TranscribeOptions()).chunks)  # warm up
    walls, wers = [], []
    for seed in range(orders):
        order = list(range(len(clips)))
        if seed:
            random.Random(seed).shuffle(order)
        begin = time.perf_counter()
        prepared = {i: engine.prepare(audio[i], TranscribeOptions()) for i in order}
        chunks = [c for i in order for c in prepared[i].chunks]
        results = []
        for at in range(0, len(chunks), batch):
            results += engine.run_batch(chunks[at : at + batch])
        texts, at = [""] * len(clips), 0
        for i in order:
            texts[i] = assemble(prepared[i], results[at : at + len(prepared[i].chunks)]).text
            at += len(prepared[i].chunks)
        walls.append(time.perf_counter() - begin)
        wers.append(wer_of(clips, texts))
    return {
        "wall_s": round(statistics.mean(walls), 3),
        "wall_s_orders": [round(w, 3) for w in walls],
        "wer": {k: round(statistics.mean(w[k] for w in wers), 4) for k in wers[0]},
    }


class Poller(threading.Thread):
    """Times plain GETs of a finished job while the server works."""

    def __init__(self, client: httpx.Client, job_id: str) -> None:
        super().__init__(daemon=True)
        self.client, self.job_id = client, job_id
        self.times: list[float] = []
        self.errors = 0
        """Connections the server closed (Ray's proxy closes idle keep-alives)."""
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            t = time.perf_counter()
            try:
                self.client.get(f"/transcribe/{self.job_id}")
            except httpx.TransportError:
                self.errors += 1
            self.times.append(time.perf_counter() - t)
            time.sleep(POLL_EVERY_S)


def transcribe_http(
    client: httpx.Client,
    clip: Clip,
    submits: list[float],
    poll_every: float | None = None,
    reads: list[int] | None = None,
) -> str:
    """Submit, then long-poll (``?wait=30``) or, with ``poll_every``, poll as the seed's
    clients do: a plain GET every ``poll_every`` seconds, ignoring Retry-After.
    ``reads``: gets the number of status reads the job took."""
    t = time.perf_counter()
    r = client.post("/transcribe", files={"file": (clip.path.name, clip.path.read_bytes())})
    submits.append(time.perf_counter() - t)
    r.raise_for_status()
    job_id = r.json()["job_id"]
    params = {"wait": 30} if poll_every is None else {}
    read = 0
    while True:
        if poll_every is not None:
            time.sleep(poll_every)
        body = client.get(f"/transcribe/{job_id}", params=params).json()
        read += 1
        if body["status"] in ("done", "error") and reads is not None:
            reads.append(read)
        if body["status"] == "done":
            return str(body["text"])
        if body["status"] == "error":
            raise RuntimeError(f"job {job_id} failed: {body['error']}")


def run_clients(
    url: str,
    clips: list[Clip],
    concurrency: int,
    keys: list[str],
    done_job: str,
    poll_every: float | None = None,
) -> dict[str, Any]:
    clients = [
        httpx.Client(base_url=url, headers={"Authorization": f"Bearer {keys[i % len(keys)]}"},
                     timeout=120)
        for i in range(concurrency)
    ]  # fmt: skip
    poller = Poller(
        httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}), done_job
    )
    submits: list[float] = []
    reads: list[int] = []
    texts: list[str] = [""] * len(clips)

    done_at: list[float] = []

    def client_work(n: int) -> None:
        for i in range(n, len(clips), concurrency):
            texts[i] = transcribe_http(clients[n], clips[i], submits, poll_every, reads)
            done_at.append(time.perf_counter() - begin)

    poller.start()
    begin = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(client_work, range(concurrency)))
    wall = time.perf_counter() - begin
    poller.stop.set()
    poller.join()
    return {
        "concurrency": concurrency,
        "keys": len(keys),
        "polls_per_s": None if poll_every is None else round(1 / poll_every, 2),
        "wall_s": round(wall, 3),
        # When each job's client saw it done, from the round's start.
        "job_done_p50_s": pct(done_at, 0.5),
        "wer": wer_of(clips, texts),
        # Status reads a job took its client: each costs the server 11-18 ms of CPU on
        # 2 cores (bench/read_cost.py).
        "status_reads_per_job": round(statistics.mean(reads), 2),
        "submit_p50_s": pct(submits, 0.5),
        "submit_p99_s": pct(submits, 0.99),
        "poll_p50_s": pct(poller.times, 0.5),
        "poll_p99_s": pct(poller.times, 0.99),
        "poll_errors": poller.errors,
    }


def with_cpu(group: int, run: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """``run(*args)``, its result with the CPU seconds that the server's processes (the
    tree under ``group``), by role, and this bench's own clients spent meanwhile: they
    share the machine's cores."""
    before, clients = cpu_under(group), time.process_time()
    result = run(*args)
    by_role = spent(before, cpu_under(group))
    result["cpu_s_by_process"] = {role: round(s, 2) for role, s in by_role.items() if s >= 0.01}
    result["cpu_s_server"] = round(sum(by_role.values()), 2)
    result["cpu_s_bench_clients"] = round(time.process_time() - clients, 2)
    return result


def sustained(
    url: str, clips: list[Clip], seconds: float, concurrency: int, server_pid: int
) -> dict[str, Any]:
    """Keep ``concurrency`` clients busy; sample the Transcriber's replica count."""
    stop = time.monotonic() + seconds
    samples: list[tuple[float, int]] = []
    finished = [0]

    def worker(n: int) -> None:
        with httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=120
        ) as c:
            i = n
            while time.monotonic() < stop:
                transcribe_http(c, clips[i % len(clips)], [])
                finished[0] += 1
                i += concurrency

    begin = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        futures = [pool.submit(worker, n) for n in range(concurrency)]
        while not all(f.done() for f in futures):
            replicas = replica_pids("Transcriber", under=server_pid)
            samples.append((round(time.monotonic() - begin, 1), len(replicas)))
            time.sleep(2)
        for f in futures:
            f.result()
    return {
        "concurrency": concurrency,
        "seconds": seconds,
        "jobs_done": finished[0],
        "transcriber_replicas_over_time": samples,
        "max_transcriber_replicas": max(n for _, n in samples),
    }


class GuardCount:
    """Clips the server's packing guard decoded again alone, counted from its log."""

    def __init__(self, log: Path) -> None:
        self.log, self.at = log, log.stat().st_size if log.exists() else 0

    def since_last(self) -> int:
        time.sleep(1.0)  # replicas' lines reach serve run's output a moment later
        with self.log.open("rb") as f:
            f.seek(self.at)
            text = f.read().decode(errors="replace")
            self.at = f.tell()
        return sum(int(n) for n in ALONE_LINE.findall(text))


def streamed(clips: list[Clip], per_client: int) -> list[Clip]:
    """The clips in the order run_clients hands them to len(clips) clients so that
    client n sends clips n, n+1, ... (wrapping), ``per_client`` of them one after
    another: each clip is sent ``per_client`` times in all, as plain decodes them."""
    n = len(clips)
    return [clips[(client + k) % n] for k in range(per_client) for client in range(n)]


def run_server(
    clips: list[Clip],
    threads: int,
    port: int,  # 0: a free one
    sustain_s: float,
    packing: bool,
    rounds: int,
    stream: int = 0,
    stream_rounds: int = STREAM_ROUNDS,
) -> dict[str, Any]:
    many_keys = [f"bench-key-{i}" for i in range(32)]
    server = bench_server(
        ",".join([KEY, *many_keys]),
        {"WHISPER_CPU_THREADS": str(threads)},
        port=port,
        whisper={"pack_short_jobs": packing},
    )
    server.start()
    out: dict[str, Any] = {}
    try:
        with httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=120
        ) as c:
            warm: list[float] = []
            transcribe_http(c, clips[0], warm)  # warm up
            idle = []
            for clip in clips[:5]:
                t = time.perf_counter()
                transcribe_http(c, clip, [])
                idle.append(time.perf_counter() - t)
            first = c.post("/transcribe", files={"file": ("a.wav", clips[0].path.read_bytes())})
            done_job = first.json()["job_id"]
            c.get(f"/transcribe/{done_job}", params={"wait": 30})
            idle_polls = []
            for _ in range(20):
                t = time.perf_counter()
                c.get(f"/transcribe/{done_job}")
                idle_polls.append(time.perf_counter() - t)
        out["idle_single_clip_s"] = idle
        out["idle_poll_p50_s"] = pct(idle_polls, 0.5)
        out["idle_poll_p99_s"] = pct(idle_polls, 0.99)
        # 32 clients, the headline, `rounds` times: this machine's speed drifts.
        # Each round: 32 clients that long-poll, then 32 that poll as the seed's clients
        # do (SEED_POLL_EVERY_S, no wait).
        guard = GuardCount(server.output)
        runs: list[tuple[int, list[str], float | None]] = [(n, [KEY], None) for n in (1, 8)]
        for _ in range(rounds):
            runs += [(32, [KEY], None), (32, [KEY], SEED_POLL_EVERY_S)]
        runs.append((32, many_keys, None))
        guard.since_last()
        assert server.proc is not None
        group = server.proc.pid
        out["runs"] = []
        for n, keys, poll_every in runs:
            run = with_cpu(group, run_clients, server.url, clips, n, keys, done_job, poll_every)
            # With packing on, a round whose guard decoded a clip alone takes longer
            # (a pass after the batch): rounds compare like with like by this count.
            run["decoded_alone_by_guard"] = guard.since_last()
            out["runs"].append(run)
        if stream > 0:
            # Throughput as a service sees it: each client sends its next clip when its
            # last is done, so a slow clip's decode overlaps the others' (a round ends
            # with its slowest job).
            out["stream"] = []
            order = streamed(clips, stream)
            for poll_every in [None, SEED_POLL_EVERY_S] * stream_rounds:
                run = with_cpu(
                    group, run_clients, server.url, order, len(clips), [KEY], done_job, poll_every
                )
                run["clips_per_client"] = stream
                run["decoded_alone_by_guard"] = guard.since_last()
                out["stream"].append(run)
        if sustain_s > 0:
            out["sustained"] = sustained(server.url, clips, sustain_s, 64, group)
    finally:
        server.stop()
    return out


def machine() -> dict[str, Any]:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu": cpu, "memory_gib": round(mem, 1), "gpu": "none"}


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    audio = result["audio_seconds"]
    by_clients: dict[int, list[float]] = {}
    for r in result["server"]["runs"]:
        if r["keys"] == 1:
            by_clients.setdefault(r["concurrency"], []).append(r["wall_s"])
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(
        list(by_clients),
        [audio / statistics.median(w) for w in by_clients.values()],
        "o-",
        label="server (one key; median of rounds)",
    )
    distinct = [r for r in result["server"]["runs"] if r["keys"] > 1]
    for r in distinct:
        ax.plot([r["concurrency"]], [audio / r["wall_s"]], "s", label="server (32 keys)")
    ax.axhline(audio / result["plain"]["wall_s"], ls="--", c="gray",
               label="plain faster-whisper, sequential (mean of 2 runs)")  # fmt: skip
    ax.axhline(audio / result["engine"]["wall_s"], ls=":", c="green",
               label="this engine in-process (mean of 2 runs x 3 orders)")  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.set_xticks([1, 8, 32], ["1", "8", "32"])
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel("audio seconds per second")
    packing = "packing on" if result.get("server_packs_short_jobs") else "packing off (default)"
    ax.set_title(
        f"tiny.en int8, {result['machine']['cpus']} CPU cores, 32 short clips, server {packing}"
    )
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--name", default="cpu-2core", help="results file name")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--port", type=int, default=0, help="0: a free port")
    parser.add_argument("--sustain", type=float, default=45, help="seconds of sustained load")
    parser.add_argument("--no-server", action="store_true", help="only (a) and (b)")
    parser.add_argument(
        "--pack", action="store_true", help="the server packs short jobs (pack_short_jobs: true)"
    )
    parser.add_argument(
        "--real-rounds",
        type=int,
        default=17,
        help="rounds of 30 packed jobs of real speech (bench/packing.py); 0: none",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=C32_ROUNDS,
        help="rounds of 32 clients of one key, each long-polling then polling",
    )
    parser.add_argument(
        "--stream",
        type=int,
        default=STREAM_CLIPS,
        help="clips each of 32 clients sends in a row, long-polling then polling; 0: none",
    )
    parser.add_argument(
        "--stream-rounds",
        type=int,
        default=STREAM_ROUNDS,
        help="times the stream runs each way (long polls, polling), alternating",
    )
    args = parser.parse_args()

    clips = make_clips(32)
    audio = sum(c.seconds for c in clips)
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "model": "tiny.en int8 (bundled)",
        "threads": args.threads,
        "clips": len(clips),
        "audio_seconds": round(audio, 2),
        "server_packs_short_jobs": args.pack,
        # The job store the server ran on (DATABASE_URL's scheme; SQLite when unset).
        "job_store": (os.environ.get("DATABASE_URL") or "sqlite").split(":", 1)[0],
    }
    print(f"{len(clips)} clips, {audio:.1f} s of audio, {args.threads} threads")
    # The baselines run before the server and again after it (the machine's
    # speed drifts); the ratios use the mean of the two.
    plain = [run_plain(clips, args.threads)]
    engine = [run_engine(clips, args.threads, packing=True, batch=32)]
    result["engine_no_packing"] = run_engine(clips, args.threads, packing=False, batch=32, orders=1)
    print("plain:", plain[0]["wall_s"], "s; engine:", engine[0]["wall_s"], "s; unpacked",
          result["engine_no_packing"]["wall_s"])  # fmt: skip
    if args.real_rounds:
        # Real speech: packed jobs against the same clips alone (bench/packing.py).
        real = WhisperEngine(EngineConfig(model="tiny.en", cpu_threads=args.threads))
        real.set_packing(Packing(enabled=True))
        measured = measure_packing(real, args.real_rounds, 30)
        result["real_speech_packing"] = {k: v for k, v in measured.items() if k != "examples"}
        del real
    if not args.no_server:
        result["server"] = run_server(
            clips,
            args.threads,
            args.port,
            args.sustain,
            args.pack,
            args.rounds,
            stream=args.stream,
            stream_rounds=args.stream_rounds,
        )
        plain.append(run_plain(clips, args.threads))
        engine.append(run_engine(clips, args.threads, packing=True, batch=32))
        print("after the server: plain", plain[1]["wall_s"], "s; engine", engine[1]["wall_s"], "s")
    result["plain"], result["engine"] = merge(plain), merge(engine)
    summarize(result)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    if "server" in result:
        plot(result, RESULTS / f"{args.name}.png")
    print(json.dumps(result["summary"], indent=2))


def merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One baseline from its runs: the mean wall time, every run kept."""
    out = dict(runs[0])
    out["wall_s_runs"] = [r["wall_s"] for r in runs]
    out["wall_s"] = round(statistics.mean(out["wall_s_runs"]), 3)
    if "wall_s_orders" in out:
        out["wall_s_orders"] = [t for r in runs for t in r["wall_s_orders"]]
    if "single_clip_s" in out:
        out["single_clip_s"] = [t for r in runs for t in r["single_clip_s"]]
    return out


def polling_tag(polls_per_s: float | None) -> str:
    """A run's polling rate in its summary keys: "" for long polls, "_polling_4hz"."""
    return f"_polling_{polls_per_s:g}hz" if polls_per_s else ""


def stream_summary(streams: list[dict[str, Any]], plain: float) -> dict[str, Any]:
    """Streams against plain faster-whisper (``plain``: its wall time for the 32 clips,
    each once), long polls and polling apart: medians, each stream's figure, the CPU
    milliseconds a job took by process, and polling against long polls."""
    summary: dict[str, Any] = {}
    ratios: dict[float | None, list[float]] = {}
    cpu_per_job: dict[float | None, list[dict[str, float]]] = {}
    for run in streams:
        # Plain decodes each clip as often as the stream sends it.
        ratios.setdefault(run["polls_per_s"], []).append(
            plain * run["clips_per_client"] / run["wall_s"]
        )
        if "cpu_s_by_process" in run:
            jobs = run["concurrency"] * run["clips_per_client"]
            spent_by = {**run["cpu_s_by_process"], "bench clients": run["cpu_s_bench_clients"]}
            cpu_per_job.setdefault(run["polls_per_s"], []).append(
                {role: 1000 * s / jobs for role, s in spent_by.items()}
            )
    for polls, each in ratios.items():
        tag = polling_tag(polls)
        summary[f"server_c32_stream{tag}_vs_plain"] = round(statistics.median(each), 2)
        summary[f"server_c32_stream{tag}_vs_plain_rounds"] = [round(r, 2) for r in each]
    for polls, per_run in cpu_per_job.items():
        roles = sorted({role for run in per_run for role in run})
        summary[f"server_c32_stream{polling_tag(polls)}_cpu_ms_per_job"] = {
            role: round(statistics.median(run.get(role, 0.0) for run in per_run), 1)
            for role in roles
        }
    seed_hz = round(1 / SEED_POLL_EVERY_S, 2)  # the polling rate as run_clients records it
    if None in ratios and seed_hz in ratios:
        longpoll, polling = (statistics.median(ratios[k]) for k in (None, seed_hz))
        summary["server_c32_stream_polling_vs_longpoll"] = round(polling / longpoll, 2)
    return summary


def summarize(result: dict[str, Any]) -> None:
    audio = result["audio_seconds"]
    plain, engine = result["plain"]["wall_s"], result["engine"]["wall_s"]
    summary: dict[str, Any] = {
        "plain_audio_s_per_s": round(audio / plain, 2),
        "engine_audio_s_per_s": round(audio / engine, 2),
        "engine_vs_plain": round(plain / engine, 2),
        "engine_unpacked_vs_plain": round(plain / result["engine_no_packing"]["wall_s"], 2),
        "wer_plain": result["plain"]["wer"]["mean_per_clip"],
        "wer_engine": result["engine"]["wer"]["mean_per_clip"],
    }
    real = result.get("real_speech_packing")
    if real:
        summary["real_packed_jobs"] = real["jobs"]
        summary["real_packed_vs_alone_wer"] = real["mean_wer_packed_vs_alone"]
        summary["real_packed_foreign_empty_lost"] = [
            real["foreign"],
            real["empty"],
            real["lost_edge"],
        ]
        summary["real_decoded_alone_by_guard"] = real["decoded_alone_by_guard"]
    server = result.get("server")
    if server:
        seed_hz = round(1 / SEED_POLL_EVERY_S, 2)  # the polling rate as run_clients records it
        walls: dict[str, list[float]] = {}
        wers: dict[str, list[float]] = {}
        for run in server["runs"]:
            tag = f"c{run['concurrency']}" + ("_distinct_keys" if run["keys"] > 1 else "")
            tag += polling_tag(run.get("polls_per_s"))
            walls.setdefault(tag, []).append(run["wall_s"])
            wers.setdefault(tag, []).append(run["wer"]["mean_per_clip"])
        for tag, times in walls.items():
            wall = statistics.median(times)  # c32: the median of its rounds
            summary[f"server_{tag}_audio_s_per_s"] = round(audio / wall, 2)
            summary[f"server_{tag}_vs_plain"] = round(plain / wall, 2)
            summary[f"server_{tag}_vs_engine"] = round(engine / wall, 2)
            summary[f"server_{tag}_wer"] = round(statistics.mean(wers[tag]), 4)
            if len(times) > 1:
                summary[f"server_{tag}_vs_plain_rounds"] = [round(plain / t, 2) for t in times]
        if "c32_polling_4hz" in walls:
            # Seed-style polling against long polls, same rounds (1.0: polling costs nothing).
            summary["server_c32_polling_vs_longpoll"] = round(
                statistics.median(walls["c32"]) / statistics.median(walls["c32_polling_4hz"]), 2
            )
            # Like with like: the rounds in which packing's guard decoded nothing alone.
            one_key = [r for r in server["runs"] if r["concurrency"] == 32 and r["keys"] == 1]
            clean: dict[float | None, list[float]] = {}
            for run in one_key:
                if run.get("decoded_alone_by_guard") == 0:
                    clean.setdefault(run["polls_per_s"], []).append(run["wall_s"])
            summary["server_c32_rounds_guard_decoded_alone"] = [
                r.get("decoded_alone_by_guard") for r in one_key
            ]
            if len(clean) == 2:
                longpoll, polling = (statistics.median(clean[k]) for k in (None, seed_hz))
                summary["server_c32_no_guard_vs_plain"] = round(plain / longpoll, 2)
                summary["server_c32_polling_4hz_no_guard_vs_plain"] = round(plain / polling, 2)
                summary["server_c32_polling_vs_longpoll_no_guard"] = round(longpoll / polling, 2)
        summary.update(stream_summary(server.get("stream", []), plain))
        direct = statistics.median(result["plain"]["single_clip_s"])
        summary["idle_single_clip_vs_direct"] = round(
            statistics.median(server["idle_single_clip_s"]) / direct, 2
        )
        if "sustained" in server:
            summary["max_transcriber_replicas"] = server["sustained"]["max_transcriber_replicas"]
    result["summary"] = summary


if __name__ == "__main__":
    main()
