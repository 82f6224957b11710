"""Append throughput and latency with replication off, async and sync, plus replication lag.

For each mode, in one run: a private nats-server (fresh store; for ``sync+always`` started with
``sync_interval: always``, i.e. JetStream fsyncs before it acks), ``ackwal serve`` with
``replication_mode`` set, and ``ackwal follow`` as a standby on its own data directory. Then
``--clients`` connections append in a closed loop (one 256-byte command per request, waiting for
each ACK) for ``--seconds`` after a warm-up, while the primary's publisher lag and the standby's
lag are sampled every 50 ms through the ``status`` op. After the load, the time until the
standby holds the primary's last record is measured (drain). Prints a table, writes JSON.

    .venv/bin/python benchmarks/replication.py [--seconds 5] [--clients 64] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import structlog
import uvloop
from common import filesystem_of, free_port, print_table, start_server, stop_process
from service_load import socket_point

from service.client import JournalClient

MODES = ("off", "async", "sync", "sync+always")
RESULTS = Path(__file__).resolve().parent / "results" / "replication.json"


def start_nats(work: str, sync_always: bool) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    conf = os.path.join(work, "nats.conf")
    with open(conf, "w") as f:
        f.write(f'listen: "127.0.0.1:{port}"\njetstream {{\n')
        f.write(f'  store_dir: "{os.path.join(work, "js")}"\n')
        if sync_always:
            f.write("  sync_interval: always\n")
        f.write("}\n")
    exe = os.path.join(os.path.dirname(sys.executable), "nats-server")
    if not os.access(exe, os.X_OK):
        exe = shutil.which("nats-server") or exe
    with open(os.path.join(work, "nats.log"), "wb") as log:
        proc = subprocess.Popen(
            [exe, "-c", conf], stdout=log, stderr=log, process_group=0
        )  # fmt: skip
    import socket as sock_mod

    deadline = time.monotonic() + 20
    while True:
        try:
            with sock_mod.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("nats-server did not start") from None
            time.sleep(0.05)
    return proc, f"nats://127.0.0.1:{port}"


async def sample_lag(
    primary: str, standby: str | None, stop: asyncio.Event
) -> dict[str, list[float]]:
    """Publisher and standby lag every 50 ms until ``stop``."""
    out: dict[str, list[float]] = {"pub_records": [], "pub_s": [], "sb_records": [], "sb_s": []}
    pc = await JournalClient.connect(primary, reconnect=False)
    sc = await JournalClient.connect(standby, reconnect=False) if standby else None
    try:
        while not stop.is_set():
            st = await pc.status()
            rep = st.get("replication")
            if rep:
                out["pub_records"].append(rep["lag_records"])
                out["pub_s"].append(rep["lag_seconds"])
            if sc is not None:
                sst = await sc.status()
                out["sb_records"].append(max(0, st["last_seq"] - sst["last_seq"]))
                out["sb_s"].append(sst["replication"]["lag_seconds"])
            await asyncio.sleep(0.05)
    finally:
        await pc.close()
        if sc is not None:
            await sc.close()
    return out


async def drain_seconds(primary: str, standby: str, timeout: float = 120) -> float:
    """Time from the end of the load until the standby holds the primary's last record."""
    pc = await JournalClient.connect(primary, reconnect=False)
    sc = await JournalClient.connect(standby, reconnect=False)
    try:
        target = (await pc.status())["last_seq"]
        t0 = time.perf_counter()
        while (await sc.status())["last_seq"] < target:
            if time.perf_counter() - t0 > timeout:
                return float("inf")
            await asyncio.sleep(0.005)
        return time.perf_counter() - t0
    finally:
        await pc.close()
        await sc.close()


async def one_mode(mode: str, args: argparse.Namespace, root: str) -> dict[str, Any]:
    work = tempfile.mkdtemp(prefix=f"repl-{mode.replace('+', '-')}-", dir=root)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        repl = mode.split("+", maxsplit=1)[0]
        extra: list[str] = ["--set", f"replication_mode={repl}"]
        follower_sock: str | None = None
        if repl != "off":
            nats_proc, url = start_nats(work, mode.endswith("always"))
            procs.append(nats_proc)
            extra += ["--set", f"replication_nats_url={url}"]
        sock = os.path.join(work, "p.sock")
        server = start_server(os.path.join(work, "primary"), sock, args.sync_mode, extra=extra)
        procs.append(server)
        if repl != "off" and args.standby:
            follower_sock = os.path.join(work, "s.sock")
            procs.append(
                start_server(
                    os.path.join(work, "standby"),
                    follower_sock,
                    args.sync_mode,
                    extra=extra[2:],
                    command="follow",
                )
            )
        stop = asyncio.Event()
        sampler = asyncio.ensure_future(sample_lag(sock, follower_sock, stop))
        row = await socket_point(sock, server.pid, args.clients, args.seconds, args.warmup)
        stop.set()
        lag = await sampler
        out: dict[str, Any] = {
            "mode": mode,
            "clients": args.clients,
            "acked_per_s": row["acked_per_s"],
            "p50_ms": row["p50_ms"],
            "p99_ms": row["p99_ms"],
            "p999_ms": row["p999_ms"],
            "mean_batch": row["mean_batch"],
            "server_cpu": row["server_cpu"],
        }
        if repl != "off":
            out["pub_lag_max_records"] = max(lag["pub_records"], default=0)
            out["pub_lag_max_s"] = round(max(lag["pub_s"], default=0.0), 4)
        if follower_sock is not None:
            out["standby_lag_max_records"] = max(lag["sb_records"], default=0)
            out["standby_lag_mean_records"] = round(
                sum(lag["sb_records"]) / max(1, len(lag["sb_records"])), 1
            )
            out["standby_drain_s"] = round(await drain_seconds(sock, follower_sock), 3)
        return out
    finally:
        for proc in reversed(procs):
            stop_process(proc, signal.SIGTERM)
        shutil.rmtree(work, ignore_errors=True)


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for mode in args.modes:
        row = await one_mode(mode, args, args.dir)
        print(row, flush=True)
        rows.append(row)
    return rows


def main() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--modes", default=",".join(MODES), help=f"subset of {','.join(MODES)}")
    parser.add_argument("--sync-mode", default="fdatasync", help="ackwal's own sync_mode")
    parser.add_argument("--dir", default=None, help="where the data directories go")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--quick", action="store_true", help="1 s, 8 clients (smoke test)")
    parser.add_argument(
        "--no-standby", dest="standby", action="store_false", help="no ackwal follow process"
    )
    args = parser.parse_args()
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if any(m not in MODES for m in args.modes):
        parser.error(f"--modes: choose from {', '.join(MODES)}")
    if args.quick:
        args.seconds, args.warmup, args.clients = 1.0, 0.3, 8
    rows = uvloop.run(run(args))
    print_table(rows)
    report = {
        "benchmark": "replication",
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "filesystem": filesystem_of(args.dir or tempfile.gettempdir()),
        },
        "seconds": args.seconds,
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
