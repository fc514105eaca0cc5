"""CPU time a server's processes spent, by what each process is, from /proc."""

from __future__ import annotations

import os
from pathlib import Path

from tests.serve.launcher import proc_stat, processes_under

TICK = os.sysconf("SC_CLK_TCK")
# Ray's processes by what their command line says (the rest by their name).
ROLES = (
    "ServeReplica:whisper:Gateway",
    "ServeReplica:whisper:Transcriber",
    "ProxyActor",
    "ServeController",
    "gcs_server",
    "raylet",
    "dashboard",
)


def cpu_under(root: int) -> dict[int, tuple[str, float]]:
    """Every process descending from ``root``: (role, CPU seconds so far)."""
    out: dict[int, tuple[str, float]] = {}
    for pid in processes_under(root):
        stat = proc_stat(pid)
        if stat is None:
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        name, fields = stat
        role = next((r for r in ROLES if r in cmdline or r in name), name)
        out[pid] = (role, (int(fields[11]) + int(fields[12])) / TICK)
    return out


def spent(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]
) -> dict[str, float]:
    """CPU seconds each role spent between two ``cpu_under`` snapshots, most first
    (processes in both: one that started or ended between them is not counted)."""
    by_role: dict[str, float] = {}
    for pid, (role, cpu) in after.items():
        if pid in before:
            by_role[role] = by_role.get(role, 0.0) + cpu - before[pid][1]
    return dict(sorted(by_role.items(), key=lambda kv: -kv[1]))
