"""Helpers shared by the benchmark scripts: CPU accounting from /proc, percentiles, tables,
starting and stopping servers within a time bound.

The scripts import this module as a sibling (``from common import ...``): they run as
``python benchmarks/<script>.py``, which puts this directory first on ``sys.path``.
"""

from __future__ import annotations

import contextlib
import os
import random
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

COMMAND = os.urandom(256)
CLK_TCK = os.sysconf("SC_CLK_TCK")


# Request ids come from a Mersenne Twister seeded from os.urandom (again in each forked child):
# ids must be unique, not unpredictable. 0.29 against 0.95 us per id from os.urandom (one
# getrandom call each), which every closed-loop client pays per request.
_ids = random.Random()
_VERSION_VARIANT_MASK = ~((0xF << 76) | (0x3 << 62)) & ((1 << 128) - 1)
_VERSION_4_RFC_4122 = (0x4 << 76) | (0x2 << 62)
os.register_at_fork(after_in_child=_ids.seed)


def new_request_id() -> bytes:
    """A fresh random UUID (version 4, RFC 4122) as 16 bytes, for every system's workload.

    Not ``uuid.uuid4().bytes`` (2.2 us: it builds a UUID object) nor ``os.urandom`` (0.95 us):
    the generator must not weigh on the systems it measures, least of all on the client-bound
    ones (JetStream's nats-py client runs at a full core).
    """
    bits = (_ids.getrandbits(128) & _VERSION_VARIANT_MASK) | _VERSION_4_RFC_4122
    return bits.to_bytes(16, "big")


def _stat_fields(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU of one process so far."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _threads_cpu_seconds(pid: int) -> float:
    """CPU of a live process's threads from schedstat: nanoseconds, not clock ticks."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
            total += int(f.read().split()[0])
    return total / 1e9


def tree_cpu_seconds(root: int) -> float:
    """CPU of ``root`` and all its descendants, including children they already reaped.

    PostgreSQL runs one process per connection: counting the whole tree keeps its server CPU
    comparable with one-process servers. Live processes are read from schedstat because
    /proc/<pid>/stat rounds each process down to whole clock ticks, which loses most of the CPU
    of hundreds of young, mostly idle backends; reaped children count through cutime/cstime.
    """
    parents: dict[int, int] = {}
    reaped: dict[int, float] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            fields = _stat_fields(int(name))
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        pid = int(name)
        parents[pid] = int(fields[1])
        reaped[pid] = (int(fields[13]) + int(fields[14])) / CLK_TCK
    total = 0.0
    for pid in parents:
        p = pid
        while p and p != root:
            p = parents.get(p, 0)
        if p == root:
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                total += _threads_cpu_seconds(pid) + reaped[pid]
    return total


def self_cpu_seconds() -> float:
    """User + system CPU of this process (all its threads) so far."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def machine_busy_seconds() -> float:
    """CPU seconds spent busy by the whole machine (all cores) since boot, from /proc/stat.

    The difference with what the benchmark and its servers used is the load of other processes:
    the noise figure for a shared machine.
    """
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    idx = min(len(sorted_values) - 1, int(q * len(sorted_values)))
    return sorted_values[idx]


def print_table(rows: list[dict[str, Any]]) -> None:
    cols = list(rows[0].keys())
    for r in rows[1:]:
        cols += [k for k in r if k not in cols]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---:|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def stop_process(
    proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 15
) -> int:
    """Ask a server to stop with ``sig``; SIGKILL its process group if it is not gone in time."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.kill()
            proc.wait(5)
    return proc.returncode


def filesystem_of(path: str) -> dict[str, str]:
    """Device, mount point and type of the filesystem holding ``path`` (from /proc/self/mounts)."""
    path = os.path.realpath(path)
    best = ("", "", "")
    with open("/proc/self/mounts") as f:
        for line in f:
            device, mount, fstype = line.split()[:3]
            inside = path == mount or path.startswith(mount.rstrip("/") + "/")
            if inside and len(mount) >= len(best[1]):
                best = (device, mount, fstype)
    return {"path": path, "device": best[0], "mount": best[1], "fstype": best[2]}


def start_server(
    data_dir: str,
    socket_path: str,
    sync_mode: str,
    timeout: float = 30,
    extra: Sequence[str] = (),
    command: str = "serve",
    interpreted: bool = False,
) -> subprocess.Popen[bytes]:
    """Start ``ackwal serve`` in its own process group; return once the socket exists.

    Its log goes to ``<data_dir>.log`` (a pipe nobody reads could fill and stall the server).
    It runs the build this process imports (PYTHONPATH is inherited: ``make bench`` points it
    at the compiled build), or with ``interpreted`` the sources the venv's editable install
    points at.
    """
    exe = os.path.join(os.path.dirname(sys.executable), "ackwal")
    log_path = data_dir.rstrip("/") + ".log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [
                exe,
                command,
                "--data-dir",
                data_dir,
                "--socket",
                socket_path,
                "--log-format",
                "json",
                "--log-level",
                "warning",
                "--metrics-addr",
                "",
                "--sync-mode",
                sync_mode,
                *extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=log_file,
            process_group=0,
            env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"} if interpreted else None,
        )
    deadline = time.monotonic() + timeout
    while not os.path.exists(socket_path):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_process(proc, signal.SIGKILL)
            with open(log_path, errors="replace") as f:
                raise RuntimeError(f"ackwal did not start: {f.read()[-2000:]}")
        time.sleep(0.05)
    return proc
