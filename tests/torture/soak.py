"""Soak: sustained load on ``ackwal serve`` for minutes; memory, descriptors and latency over time.

    python tests/torture/soak.py [--minutes 10] [--rate 1000] [--out DIR]      (make soak)

Starts ``ackwal serve`` on a fresh data directory, appends at a steady rate from several
pipelined clients (every ACK's latency is recorded), follows the journal with a subscriber
(checking it sees every seq once, in order) and, when the tree has them, stores a snapshot and
lets retention delete old segments periodically. Every ``--interval`` seconds it samples the
server's RSS, open descriptors, data-directory size, the subscriber's lag and the latency
percentiles of that interval. Writes ``soak.json`` and ``soak.png`` to ``--out`` (default
benchmarks/results/soak-<UTC time>) and flags growth beyond the bounds below; exit status 1 if
anything was flagged or a check failed.

Bounds, measured after a warm-up (the idempotency index is capped with
``idempotency_max_entries`` so that it fills during the warm-up and then stays level):
RSS may grow by at most max(32 MiB, 15%), open descriptors by at most 8, and the p99 of the
last quarter may be at most 5x that of the first quarter after warm-up (or 50 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from service.client import JournalClient
from service.settings import SPEC_BY_KEY

ROOT = Path(__file__).resolve().parents[2]
ACKWAL = str(Path(sys.executable).with_name("ackwal"))
MiB = 1024 * 1024
INDEX_CAP = 50_000
RSS_GROWTH = (32 * MiB, 0.15)
FD_GROWTH = 8
P99_GROWTH = (5.0, 50.0)  # factor, absolute ms


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def proc_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def dir_bytes(path: Path) -> int:
    total = 0
    for dirpath, _, names in os.walk(path):
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(os.path.join(dirpath, name)).st_size
    return total


@dataclass
class Sample:
    t: float
    rss_mib: float
    fds: int
    data_mib: float
    acks: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    subscriber_lag: int
    snapshots: int
    last_seq: int


@dataclass
class State:
    latencies: list[float] = field(default_factory=list)
    acks: int = 0
    last_acked: int = 0
    sub_seq: int = 0
    snapshots: int = 0
    errors: list[str] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)


def features() -> dict[str, bool]:
    """What this tree offers: retention and snapshots are optional (built separately)."""
    return {
        "retention": "retention" in SPEC_BY_KEY,
        "snapshots": hasattr(JournalClient, "snapshot_put"),
    }


async def appender(sock: str, state: State, rate: float, window: int) -> None:
    """Keep ``window`` appends in flight, paced to ``rate`` per second."""
    async with JournalClient(sock, reconnect=False) as client:
        interval = window / rate
        next_at = time.monotonic()
        while not state.stop.is_set():

            async def one() -> None:
                rid = uuid.uuid4().bytes
                t0 = time.perf_counter()
                result = await client.append(rid, "soak", rid * 12)
                state.latencies.append(time.perf_counter() - t0)
                state.acks += 1
                state.last_acked = max(state.last_acked, result.seq)

            await asyncio.gather(*(one() for _ in range(window)))
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -1.0:
                next_at = time.monotonic()  # fell behind: do not burst to catch up


async def subscriber(sock: str, state: State) -> None:
    async with JournalClient(sock, reconnect=False) as client:
        from_seq = int((await client.status())["last_seq"]) + 1
        expected = from_seq
        async for entry in client.subscribe(from_seq):
            if entry.seq != expected:
                state.errors.append(f"subscriber expected seq {expected}, got {entry.seq}")
                return
            expected += 1
            state.sub_seq = entry.seq
            if state.stop.is_set():
                return


async def snapshotter(sock: str, state: State, every: float) -> None:
    async with JournalClient(sock, reconnect=False) as client:
        while not state.stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(every):  # not wait_for: see harness.bounded()
                    await state.stop.wait()
            if state.stop.is_set() or state.last_acked == 0:
                continue
            blob = os.urandom(256 * 1024)
            await client.snapshot_put(state.last_acked, blob)
            state.snapshots += 1


async def soak(args: argparse.Namespace) -> int:
    have = features()
    data_dir = Path(tempfile.mkdtemp(prefix="ackwal-soak-"))
    sock_dir = tempfile.mkdtemp(prefix="aw-", dir="/tmp")
    sock = os.path.join(sock_dir, "s.sock")
    sets = [
        "segment_size=8388608",
        f"idempotency_max_entries={INDEX_CAP}",
    ]
    if have["retention"]:
        policy = "snapshot_anchored" if have["snapshots"] else "keep_last_segments"
        sets += [f"retention={policy}", "retention_segments=4", "retention_interval=5"]
    argv = [ACKWAL, "serve", "--data-dir", str(data_dir), "--socket", sock]
    argv += ["--log-format", "json", "--metrics-addr", ""]
    for item in sets:
        argv += ["--set", item]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / "server.log", "wb")  # noqa: SIM115 - closed in finally
    server = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=str(ROOT))
    state = State()
    samples: list[Sample] = []
    try:
        deadline = time.monotonic() + 30
        while "service.ready" not in (out / "server.log").read_text(errors="replace"):
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("server did not start: see server.log")
            await asyncio.sleep(0.05)
        per_client = args.rate / args.clients
        tasks = [
            asyncio.create_task(appender(sock, state, per_client, args.window))
            for _ in range(args.clients)
        ]
        tasks.append(asyncio.create_task(subscriber(sock, state)))
        if have["snapshots"]:
            tasks.append(asyncio.create_task(snapshotter(sock, state, args.snapshot_every)))
        started = time.monotonic()
        end = started + args.minutes * 60
        taken = 0
        while time.monotonic() < end:
            await asyncio.sleep(min(args.interval, max(0.0, end - time.monotonic())))
            for task in tasks:
                if task.done() and task.exception() is not None:
                    raise RuntimeError(f"a load task failed: {task.exception()!r}")
            window = [x * 1000 for x in state.latencies[taken:]]
            taken = len(state.latencies)
            samples.append(
                Sample(
                    t=round(time.monotonic() - started, 2),
                    rss_mib=round(proc_rss(server.pid) / MiB, 2),
                    fds=len(os.listdir(f"/proc/{server.pid}/fd")),
                    data_mib=round(dir_bytes(data_dir) / MiB, 2),
                    acks=len(window),
                    p50_ms=round(percentile(window, 50), 3),
                    p99_ms=round(percentile(window, 99), 3),
                    max_ms=round(max(window, default=0.0), 3),
                    subscriber_lag=max(0, state.last_acked - state.sub_seq),
                    snapshots=state.snapshots,
                    last_seq=state.last_acked,
                )
            )
            s = samples[-1]
            print(
                f"t={s.t:7.1f}s rss={s.rss_mib:6.1f}MiB fds={s.fds:3d} data={s.data_mib:7.1f}MiB "
                f"acks={s.acks:6d} p50={s.p50_ms:6.2f}ms p99={s.p99_ms:7.2f}ms "
                f"lag={s.subscriber_lag:5d} snaps={s.snapshots}",
                flush=True,
            )
        state.stop.set()
        for task in tasks:
            task.cancel()
        try:
            async with asyncio.timeout(30):
                await asyncio.gather(*tasks, return_exceptions=True)
        except TimeoutError:
            raise RuntimeError("the load tasks did not stop within 30s") from None
    finally:
        state.stop.set()
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(10)  # TimeoutExpired names the stuck server rather than hanging
        log.close()
        shutil.rmtree(sock_dir, ignore_errors=True)
        if not args.keep_data:
            shutil.rmtree(data_dir, ignore_errors=True)
    flags = judge(samples, args) + state.errors
    if server.returncode != 0:
        flags.append(f"server exited with {server.returncode}")
    result = {
        "settings": {**vars(args), "server_sets": sets, "features": have},
        "bounds": {
            "rss_growth": f"max({RSS_GROWTH[0] // MiB} MiB, {RSS_GROWTH[1]:.0%})",
            "fd_growth": FD_GROWTH,
            "p99_growth": f"max({P99_GROWTH[0]}x, {P99_GROWTH[1]} ms)",
            "warmup_seconds": warmup(args),
        },
        "total_acks": state.acks,
        "overall_p50_ms": round(percentile([x * 1000 for x in state.latencies], 50), 3),
        "overall_p99_ms": round(percentile([x * 1000 for x in state.latencies], 99), 3),
        "snapshots": state.snapshots,
        "flags": flags,
        "samples": [asdict(s) for s in samples],
    }
    (out / "soak.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(samples, out / "soak.png", args)
    print(
        f"soak: {args.minutes} min, {state.acks} ACKs, p50 {result['overall_p50_ms']} ms, "
        f"p99 {result['overall_p99_ms']} ms, snapshots {state.snapshots}, "
        f"retention {'on' if have['retention'] else 'not in this tree'}; "
        f"results in {out}"
    )
    for flag in flags:
        print(f"FLAG: {flag}")
    return 1 if flags else 0


def warmup(args: argparse.Namespace) -> float:
    """Seconds until the idempotency index is full, plus a margin; at most a third of the run."""
    fill = INDEX_CAP / args.rate
    return min(args.minutes * 60 / 3, fill + 10)


def judge(samples: list[Sample], args: argparse.Namespace) -> list[str]:
    """Growth beyond the bounds between the end of the warm-up and the end of the run."""
    settled = [s for s in samples if s.t >= warmup(args)]
    if len(settled) < 4:
        return ["too few samples after the warm-up to judge growth (run longer)"]
    flags = []
    first, last = settled[0], settled[-1]
    quarter = max(1, len(settled) // 4)
    rss_start = min(s.rss_mib for s in settled[:quarter])
    rss_end = max(s.rss_mib for s in settled[-quarter:])
    allowed = max(RSS_GROWTH[0] / MiB, rss_start * RSS_GROWTH[1])
    if rss_end - rss_start > allowed:
        flags.append(f"RSS grew {rss_start:.1f} -> {rss_end:.1f} MiB (allowed +{allowed:.1f})")
    if last.fds - first.fds > FD_GROWTH:
        flags.append(f"open descriptors grew {first.fds} -> {last.fds}")
    p99_start = percentile([s.p99_ms for s in settled[:quarter]], 50)
    p99_end = percentile([s.p99_ms for s in settled[-quarter:]], 50)
    if p99_end > max(P99_GROWTH[0] * p99_start, P99_GROWTH[1]):
        flags.append(f"p99 grew {p99_start:.2f} -> {p99_end:.2f} ms")
    return flags


def plot(samples: list[Sample], path: Path, args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s.t for s in samples]
    fig, axes = plt.subplots(2, 2, figsize=(12, 7), sharex=True)
    (a, b), (c, d) = axes
    a.plot(t, [s.rss_mib for s in samples], label="server RSS (MiB)")
    a.plot(t, [s.data_mib for s in samples], label="data dir (MiB)")
    a.set_title("memory and disk")
    a.legend()
    b.plot(t, [s.fds for s in samples], color="tab:green")
    b.set_title("server open file descriptors")
    c.plot(t, [s.p50_ms for s in samples], label="p50")
    c.plot(t, [s.p99_ms for s in samples], label="p99")
    c.set_yscale("log")
    c.set_title("ACK latency per interval (ms)")
    c.legend()
    d.plot(t, [s.acks / args.interval for s in samples], label="ACKs/s")
    d.plot(t, [s.subscriber_lag for s in samples], label="subscriber lag (records)")
    d.set_title("throughput and subscriber lag")
    d.legend()
    for ax in (c, d):
        ax.set_xlabel("seconds")
    for ax in axes.flat:
        ax.axvline(warmup(args), color="grey", linestyle=":", linewidth=1)
    fig.suptitle(f"ackwal soak: {args.minutes} min at {args.rate:.0f} appends/s")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=1000.0, help="appends per second")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--window", type=int, default=8, help="appends in flight per client")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--snapshot-every", type=float, default=20.0, help="seconds")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / f"soak-{stamp}"))
    parser.add_argument("--keep-data", action="store_true")
    args = parser.parse_args(argv)
    return asyncio.run(soak(args))


if __name__ == "__main__":
    sys.exit(main())
