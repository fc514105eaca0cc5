"""whisper-serve: a command-line client for the job API.

export WHISPER_SERVER_URL=http://localhost:8000 WHISPER_API_KEY=...
whisper-serve transcribe meeting.mp3 interview.wav --format srt
whisper-serve transcribe long.mp3 --no-wait     (prints the job id, a line a file; --wait: default)
whisper-serve status JOB_ID [--format txt]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx

FORMATS = ("txt", "json", "srt", "vtt")
# Long polls: each GET waits up to this long for the job to end.
POLL_WAIT_S = 20
# With a status line on screen, it is redrawn this often.
PROGRESS_POLL_S = 1
BAR_WIDTH = 24


class CliError(Exception):
    """Something the user can fix; printed without a traceback."""


def _client() -> httpx.Client:
    url = os.environ.get("WHISPER_SERVER_URL", "http://localhost:8000")
    key = os.environ.get("WHISPER_API_KEY", "")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=url, headers=headers, timeout=POLL_WAIT_S + 30)


def _check(response: httpx.Response) -> httpx.Response:
    if response.status_code >= 400:
        try:
            message = response.json().get("detail", response.text)
        except ValueError:
            message = response.text
        raise CliError(f"{response.status_code}: {message}")
    return response


def submit(client: httpx.Client, path: Path, options: dict[str, str]) -> str:
    if not path.is_file():
        raise CliError(f"{path}: no such file")
    with path.open("rb") as f:
        response = _check(client.post("/transcribe", files={"file": (path.name, f)}, data=options))
    return str(response.json()["job_id"])


def wait(client: httpx.Client, job_id: str, label: str, show: bool) -> dict[str, Any]:
    """Long-poll until the job ends, drawing a status line (a bar once it has progress)."""
    begin = time.monotonic()
    # Someone watching: come back often enough to move the bar and the clock.
    poll = PROGRESS_POLL_S if show else POLL_WAIT_S
    while True:
        job: dict[str, Any] = _check(
            client.get(f"/transcribe/{job_id}", params={"wait": poll})
        ).json()
        if show:
            print(f"\r{status_line(job, label, time.monotonic() - begin)}", end="", file=sys.stderr)
        if job["status"] in ("done", "error"):
            if show:
                print(file=sys.stderr)
            return job


def status_line(job: dict[str, Any], label: str, elapsed: float) -> str:
    """``meeting.mp3: processing [######------]  52% (14 s, 301 s of audio)``."""
    audio = f", {job['duration']:.0f} s of audio" if job.get("duration") else ""
    progress = job.get("progress")
    state = job["status"]
    if state == "queued" and job.get("queue_position"):
        state = f"queued (#{job['queue_position']})"
    elif state in ("processing", "done") and progress is not None:
        filled = round(BAR_WIDTH * progress)
        state += f" [{'#' * filled}{'-' * (BAR_WIDTH - filled)}] {progress:4.0%}"
    return f"{label}: {state} ({elapsed:.0f} s{audio})   "


def render(client: httpx.Client, job_id: str, fmt: str) -> str:
    if fmt == "json":
        return _check(client.get(f"/transcribe/{job_id}")).text
    return _check(client.get(f"/transcribe/{job_id}", params={"format": fmt})).text


def main(argv: list[str] | None = None, client: httpx.Client | None = None) -> int:
    """Run the command line; ``client`` (tests) replaces the one built from the environment."""
    parser = argparse.ArgumentParser(
        prog="whisper-serve",
        description="Transcribe audio with a whisper-serve server "
        "(WHISPER_SERVER_URL, WHISPER_API_KEY from the environment).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("transcribe", help="send files, wait, print their transcripts")
    run.add_argument("files", nargs="+", type=Path)
    run.add_argument("--format", choices=FORMATS, default="txt")
    run.add_argument("--language", help="ISO 639-1 code, e.g. fr; detected when left out")
    run.add_argument(
        "--wait",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="wait and print transcripts (default), or print job ids and return",
    )
    run.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a status line with a progress bar on stderr (default: when it is a terminal)",
    )
    status = commands.add_parser("status", help="a job's status, or its transcript once done")
    status.add_argument("job_id")
    status.add_argument("--format", choices=FORMATS, default="json")
    args = parser.parse_args(argv)
    http = client or _client()
    try:
        return _run(args, http)
    except CliError as exc:
        print(f"whisper-serve: {exc}", file=sys.stderr)
        return 2
    except httpx.HTTPError as exc:
        print(
            f"whisper-serve: cannot reach the server ({exc}); check WHISPER_SERVER_URL",
            file=sys.stderr,
        )
        return 2
    finally:
        if client is None:
            http.close()


def _run(args: argparse.Namespace, client: httpx.Client) -> int:
    """Do what the parsed command line asks; the exit status."""
    if args.command == "status":
        job = _check(client.get(f"/transcribe/{args.job_id}")).json()
        print(render(client, args.job_id, args.format) if job["status"] == "done" else job)
        return 0
    options = {"language": args.language} if args.language else {}
    ids = [(path, submit(client, path, options)) for path in args.files]
    if not args.wait:
        for _path, job_id in ids:
            print(job_id)  # one per line, in the order of the files
        return 0
    failed = 0
    for path, job_id in ids:
        show = sys.stderr.isatty() if args.progress is None else args.progress
        job = wait(client, job_id, str(path), show=show)
        if job["status"] == "error":
            print(f"{path}: {job.get('error')}", file=sys.stderr)
            failed += 1
            continue
        if len(ids) > 1 and args.format == "txt":
            print(f"== {path}")
        print(render(client, job_id, args.format), end="")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
