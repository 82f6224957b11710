"""``ackwal disk-check DIR``: what write + fdatasync costs on this disk, as pg_test_fsync does.

Every ACK waits for one fdatasync, and one fdatasync carries a whole batch (group commit), so
this latency is the floor of the ACK latency and its rate times the batch size is the ceiling
of the throughput. The test writes a temporary file in DIR (``*.tmp``: a server's recovery
removes one left behind by a crash) and never touches the log. ``overwrite`` rewrites
zero-filled space, as the WAL does with preallocation (the default); ``append`` grows the file,
as it does without.

Two warnings: a p99 above what the ACK latency target allows, and a median so short that the
device cannot be writing to stable storage (a volatile write cache, or a RAM-backed filesystem):
ACKs there would not survive a power cut.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Final

from service.tools.common import (
    EXIT_OK,
    SubParsers,
    ToolError,
    ToolParser,
    add_tool_parser,
    guarded,
    lock_holder,
    log_directory,
    positive_float,
    positive_int,
)
from service.tools.progress import Progress, human_bytes, summary

EXIT_WARNINGS: Final = 1
SIZES: Final = (4096, 64 * 1024, 1024 * 1024)
REGION: Final = 16 * 1024 * 1024  # overwrite tests cycle through this preallocated space
MIN_OPS: Final = 5
TEMP_NAME: Final = "ackwal-disk-check.{pid}.tmp"


def register(sub: SubParsers[ToolParser]) -> None:
    parser = add_tool_parser(
        sub,
        "disk-check",
        help="measure write + fdatasync latency and rate in a directory",
        description="Measure write + fdatasync (or fsync) latency and rate in DIR for several "
        "write sizes, like pg_test_fsync, and derive what group commit can reach on this disk "
        "(one write + one sync per batch). Warns when the sync p99 is too slow for the ACK "
        "latency target, or when the median is implausibly fast for a disk that honours "
        "flushes (a write cache that lies, or tmpfs). Writes only a temporary file in DIR; "
        "safe next to a running server, but the two then share the disk.",
        exits=f"""\
  {EXIT_OK}   measured, no warning
  {EXIT_WARNINGS}   measured, with warnings (printed)""",
    )
    parser.add_argument("directory", metavar="DIR", help="a directory on the disk to test")
    parser.add_argument(
        "--seconds",
        type=positive_float,
        default=5.0,
        help="total measuring time, shared by the tests (default: %(default)s)",
    )
    parser.add_argument(
        "--sync-mode",
        choices=["fdatasync", "fsync"],
        default="fdatasync",
        help="the sync_mode setting to measure (default: %(default)s)",
    )
    parser.add_argument(
        "--max-p99-ms",
        type=positive_float,
        default=2.0,
        metavar="MS",
        help="warn when the 4 KiB sync p99 exceeds this (default: %(default)s)",
    )
    parser.add_argument(
        "--min-sync-us",
        type=positive_float,
        default=20.0,
        metavar="US",
        help="warn when the 4 KiB sync median is below this (default: %(default)s)",
    )
    parser.add_argument(
        "--entry-size",
        type=positive_int,
        default=256,
        metavar="BYTES",
        help="typical encoded entry size, for the group-commit estimate (default: %(default)s)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


@dataclass(frozen=True, slots=True)
class Measurement:
    mode: str  # overwrite (preallocated space) or append (growing file)
    size: int
    ops: int
    seconds: float
    ops_per_s: float
    mb_per_s: float
    p50_us: float
    p99_us: float
    max_us: float


def measure(
    fd: int,
    mode: str,
    size: int,
    seconds: float,
    sync: Callable[[int], None],
    tick: Callable[[], None],
) -> Measurement:
    """Write ``size`` bytes and sync, over and over, for ``seconds`` (at least MIN_OPS times)."""
    buf = os.urandom(size)  # incompressible: some devices compress or deduplicate zeros
    latencies: list[int] = []
    offset = 0
    clock = time.perf_counter_ns
    started = clock()
    deadline = started + int(seconds * 1e9)
    while True:
        t0 = clock()
        done = 0
        while done < size:
            done += os.pwrite(fd, memoryview(buf)[done:], offset + done)
        sync(fd)
        t1 = clock()
        latencies.append(t1 - t0)
        offset = (offset + size) % REGION if mode == "overwrite" else offset + size
        tick()
        if len(latencies) >= MIN_OPS and t1 >= deadline:
            break
    elapsed = (clock() - started) / 1e9
    latencies.sort()
    n = len(latencies)
    return Measurement(
        mode=mode,
        size=size,
        ops=n,
        seconds=round(elapsed, 4),
        ops_per_s=round(n / elapsed, 1),
        mb_per_s=round(n * size / elapsed / 1e6, 2),
        p50_us=round(latencies[n // 2] / 1000, 1),
        p99_us=round(latencies[min(n - 1, int(n * 0.99))] / 1000, 1),
        max_us=round(latencies[-1] / 1000, 1),
    )


def run_tests(
    directory: str, seconds: float, sync_mode: str, progress: Progress
) -> list[Measurement]:
    sync: Callable[[int], None] = os.fdatasync if sync_mode == "fdatasync" else os.fsync
    plan = [("overwrite", size) for size in SIZES] + [("append", SIZES[0])]
    share = seconds / len(plan)
    path = os.path.join(directory, TEMP_NAME.format(pid=os.getpid()))
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    started = time.monotonic()

    def tick() -> None:
        progress.update(time.monotonic() - started)

    try:
        zeros = bytes(1024 * 1024)
        for off in range(0, REGION, len(zeros)):
            os.pwrite(fd, zeros, off)
        os.fsync(fd)
        results = []
        for mode, size in plan:
            if mode == "append":
                os.ftruncate(fd, 0)
                os.fsync(fd)
            results.append(measure(fd, mode, size, share, sync, tick))
        return results
    finally:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):  # a starting server may have removed it
            os.unlink(path)


def group_commit(results: list[Measurement], entry_size: int) -> list[dict[str, Any]]:
    """Ceiling of entries/s per batch size: one write + one sync per batch."""
    out = []
    for m in results:
        if m.mode != "overwrite":
            continue
        per_batch = max(1, m.size // entry_size)
        out.append(
            {
                "batch_bytes": m.size,
                "batch_entries": per_batch,
                "batches_per_s": m.ops_per_s,
                "entries_per_s": round(m.ops_per_s * per_batch),
                "ack_floor_ms": round(m.p50_us / 1000, 3),
            }
        )
    return out


def warnings_for(
    results: list[Measurement], max_p99_ms: float, min_sync_us: float, fstype: str | None
) -> list[str]:
    base = next(m for m in results if m.mode == "overwrite" and m.size == SIZES[0])
    out = []
    if base.p99_us > max_p99_ms * 1000:
        out.append(
            f"sync p99 is {base.p99_us / 1000:.2f} ms for a 4 KiB write, above "
            f"{max_p99_ms:g} ms: ACK p99 targets of a few ms are out of reach on this disk"
        )
    if base.p50_us < min_sync_us:
        where = f" ({fstype})" if fstype else ""
        out.append(
            f"sync median is {base.p50_us:.1f} us for a 4 KiB write, below {min_sync_us:g} us: "
            f"implausibly fast for a disk that writes to stable storage{where}. A volatile "
            "write cache or a RAM-backed filesystem would lose acknowledged entries at a "
            "power cut, unless the device has power-loss protection"
        )
    return out


def filesystem_of(directory: str) -> dict[str, str] | None:
    """Type, source and mount point of the filesystem holding ``directory`` (Linux)."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    target = os.path.realpath(directory)
    best: dict[str, str] | None = None
    best_len = -1
    for line in lines:
        left, sep, right = line.partition(" - ")
        fields = left.split()
        extra = right.split()
        if not sep or len(fields) < 5 or len(extra) < 2:
            continue
        mount = fields[4].replace("\\040", " ")
        inside = target == mount or target.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) > best_len:
            best = {"type": extra[0], "source": extra[1], "mount_point": mount}
            best_len = len(mount)
    return best


@guarded("disk-check")
def run(args: argparse.Namespace) -> int:
    directory = log_directory(args.directory)
    if not os.access(directory, os.W_OK):
        raise ToolError(f"{directory} is not writable")
    fs = filesystem_of(directory)
    holder = lock_holder(directory)
    with Progress("measuring", args.seconds, unit="s") as progress:
        results = run_tests(directory, args.seconds, args.sync_mode, progress)
    commit = group_commit(results, args.entry_size)
    warnings = warnings_for(results, args.max_p99_ms, args.min_sync_us, fs["type"] if fs else None)
    code = EXIT_WARNINGS if warnings else EXIT_OK
    if args.json:
        doc = {
            "directory": directory,
            "filesystem": fs,
            "sync_mode": args.sync_mode,
            "seconds": args.seconds,
            "held_by_pid": holder,
            "results": [asdict(m) for m in results],
            "group_commit": commit,
            "warnings": warnings,
            "exit_code": code,
        }
        print(json.dumps(doc, indent=2))
    else:
        print("\n".join(report_text(directory, fs, args, results, commit, warnings, holder)))
    base = results[0]
    summary(
        f"disk-check: {args.sync_mode} p50 {base.p50_us:.0f} us, p99 {base.p99_us:.0f} us, "
        f"{base.ops_per_s:,.0f}/s at 4 KiB; {len(warnings)} warning(s) (exit {code})"
    )
    return code


def report_text(
    directory: str,
    fs: dict[str, str] | None,
    args: argparse.Namespace,
    results: list[Measurement],
    commit: list[dict[str, Any]],
    warnings: list[str],
    holder: int | None,
) -> list[str]:
    where = f" ({fs['type']} {fs['source']} on {fs['mount_point']})" if fs else ""
    lines = [f"disk-check {directory}{where}", f"write + {args.sync_mode}, {args.seconds:g} s"]
    if holder is not None:
        lines.append("note: a server holds this directory; it shares the disk with this test")
    lines.append(
        f"  {'MODE':<10} {'SIZE':>8} {'OPS/S':>9} {'MB/S':>8} {'P50 us':>9} {'P99 us':>9} "
        f"{'MAX us':>9}"
    )
    for m in results:
        lines.append(
            f"  {m.mode:<10} {human_bytes(m.size):>8} {m.ops_per_s:>9,.0f} {m.mb_per_s:>8.1f} "
            f"{m.p50_us:>9,.0f} {m.p99_us:>9,.0f} {m.max_us:>9,.0f}"
        )
    lines.append(f"group commit ceiling (one write + sync per batch, {args.entry_size} B entries):")
    for c in commit:
        lines.append(
            f"  batch of {c['batch_entries']:>5} ({human_bytes(c['batch_bytes'])}): "
            f"{c['entries_per_s']:>11,} entries/s, ACK floor {c['ack_floor_ms']:.2f} ms"
        )
    lines.append("  (the disk's ceiling: encoding and the socket keep ackwal well below it)")
    if warnings:
        lines.append("warnings:")
        lines.extend(f"  ! {w}" for w in warnings)
    return lines
