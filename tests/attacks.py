"""Issue 11's attacks as a black-box client makes them, over raw sockets on loopback
(shared by tests/unit/test_limits.py, tests/serve/test_front_door.py and bench/attacks.py)."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from pathlib import Path

import httpx

JFK = Path(__file__).parent / "data" / "jfk.flac"
MB = 1 << 20


def stalled_upload(port: int, key: str, declared: int = 1000, sent: int = 150) -> socket.socket:
    """A multipart upload that declares ``declared`` bytes and stops after ``sent``."""
    head = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
    body = (head + b"\0" * declared)[:sent]
    sock = socket.create_connection(("127.0.0.1", port), timeout=15)
    sock.sendall(
        b"POST /transcribe HTTP/1.1\r\nHost: x\r\n"
        + f"Authorization: Bearer {key}\r\n".encode()
        + b"Content-Type: multipart/form-data; boundary=b\r\n"
        + f"Content-Length: {declared}\r\n\r\n".encode()
        + body
    )
    return sock


def response(sock: socket.socket) -> tuple[int, dict[str, str], dict]:
    """Status, headers and JSON body of the one response on ``sock``."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection without answering"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk
        body += chunk
    return int(lines[0].split()[1]), headers, json.loads(body[:length] or b"{}")


def answers_now(socks: list[socket.socket]) -> list[int]:
    """The status each socket has been answered with so far; 0 where it is still held."""
    codes = []
    for sock in socks:
        sock.setblocking(False)
        try:
            codes.append(status_of(sock.recv(4096)))
        except BlockingIOError:
            codes.append(0)
    return codes


def submit_as(url: str, key: str, timeout: float) -> httpx.Response:
    """jfk.flac submitted with ``key`` (another key's job, beside the attack)."""
    return httpx.post(
        f"{url}/transcribe",
        headers={"Authorization": f"Bearer {key}"},
        files={"file": ("jfk.flac", JFK.read_bytes())},
        timeout=timeout,
    )


class HealthProbe:
    """Asks /health every 0.1 s in the background; the slowest answer and every status."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.latencies: list[float] = []
        self.codes: set[object] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.codes.add(httpx.get(f"{self.url}/health", timeout=30).status_code)
            except httpx.HTTPError as exc:
                self.codes.add(type(exc).__name__)
            self.latencies.append(time.monotonic() - started)
            time.sleep(0.1)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        time.sleep(0.3)
        return self

    def __exit__(self, *_exc: object) -> None:
        time.sleep(0.3)
        self._stop.set()
        self._thread.join()


def big_header(port: int, megabytes: int) -> bytes:
    """A key-less request with one header of ``megabytes``; what came back (or b'')."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ")
        try:
            for _ in range(megabytes):
                sock.sendall(b"a" * MB)
            sock.sendall(b"\r\n\r\n")
        except OSError:
            pass  # the proxy answered and closed while we were still sending
        try:
            return sock.recv(4096)
        except OSError:
            return b""


def chunked_upload(port: int, key: str, megabytes: int) -> tuple[bytes, int]:
    """A chunked multipart body of ``megabytes``; the answer and how many MB went out first."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(
            b"POST /transcribe HTTP/1.1\r\nHost: x\r\n"
            + f"Authorization: Bearer {key}\r\n".encode()
            + b"Content-Type: multipart/form-data; boundary=b\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        part = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
        sock.sendall(b"%x\r\n%s\r\n" % (len(part), part))
        data = b"\0" * MB
        sent = 0
        answer = b""
        try:
            while sent < megabytes and not answer:
                sock.sendall(b"%x\r\n%s\r\n" % (len(data), data))
                sent += 1
                sock.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    answer = sock.recv(4096)
                sock.setblocking(True)
        except OSError:
            pass
        if not answer:
            sock.settimeout(30)
            try:
                answer = sock.recv(4096)
            except OSError:
                answer = b""
        return answer, sent


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0
