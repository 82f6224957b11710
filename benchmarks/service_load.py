"""Closed-loop load over the Unix socket, plus append_batch and the embedded (in-process) rate.

Starts ``ackwal serve`` as a subprocess on a temporary data directory, then for each client
count runs that many JournalClient connections, each appending a unique request id with a
256-byte command and waiting for its ACK before the next (closed loop), for a fixed duration
after a warm-up. Prints acked appends/s, latency percentiles, mean batch size, fdatasyncs/s and
server/client CPU; writes JSON.

    .venv/bin/python benchmarks/service_load.py [--seconds 5] [--clients 1,8,64,256] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import platform
import shutil
import tempfile
import time
from typing import Any

import structlog
import uvloop
from common import (
    COMMAND,
    new_request_id,
    percentile,
    print_table,
    proc_cpu_seconds,
    self_cpu_seconds,
    start_server,
)

from service.client import JournalClient
from service.journal import Journal
from service.settings import load_settings


async def closed_loop(
    clients: list[JournalClient], seconds: float, warmup: float, batch: int = 0
) -> tuple[int, list[float], float]:
    """Run every client in a closed loop; returns (acked entries, latencies in ms, elapsed)."""
    latencies: list[float] = []
    acked = 0
    loop = asyncio.get_running_loop()
    start_measure = loop.time() + warmup
    stop = start_measure + seconds

    async def one(client: JournalClient) -> None:
        nonlocal acked
        while True:
            t0 = time.perf_counter()
            if batch:
                await client.append_batch(
                    [
                        {
                            "request_id": new_request_id(),
                            "command_type": "NewOrder",
                            "command": COMMAND,
                        }
                        for _ in range(batch)
                    ]
                )
                n = batch
            else:
                await client.append(new_request_id(), "NewOrder", COMMAND)
                n = 1
            now = loop.time()
            if now >= stop:
                return
            if now >= start_measure:
                latencies.append((time.perf_counter() - t0) * 1000)
                acked += n

    await asyncio.gather(*(one(c) for c in clients))
    return acked, latencies, seconds


async def _client_share(
    socket_path: str, n: int, seconds: float, warmup: float, batch: int
) -> tuple[int, list[float], float]:
    """n connections in a closed loop; (acked, latencies in ms, this process's CPU seconds)."""
    clients = [await JournalClient.connect(socket_path, reconnect=False) for _ in range(n)]
    try:
        cpu0 = self_cpu_seconds()
        acked, lat, _ = await closed_loop(clients, seconds, warmup, batch)
        return acked, lat, self_cpu_seconds() - cpu0
    finally:
        for c in clients:
            await c.close()


def _client_process(
    socket_path: str,
    n: int,
    seconds: float,
    warmup: float,
    batch: int,
    out: multiprocessing.connection.Connection,
) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    out.send(uvloop.run(_client_share(socket_path, n, seconds, warmup, batch)))
    out.close()


async def socket_point(
    socket_path: str,
    server_pid: int,
    n: int,
    seconds: float,
    warmup: float,
    batch: int = 0,
    procs: int = 1,
) -> dict[str, Any]:
    """One load point; with ``procs`` > 1 the n clients are spread over that many processes
    (engines are separate processes; one Python client process serialises every reply)."""
    probe = await JournalClient.connect(socket_path, reconnect=False)
    try:
        before = await probe.status()
        srv0 = proc_cpu_seconds(server_pid)
        procs = max(1, min(procs, n))
        if procs == 1:
            acked, lat, client_cpu = await _client_share(socket_path, n, seconds, warmup, batch)
        else:
            ctx = multiprocessing.get_context("spawn")
            pipes, workers = [], []
            for i in range(procs):
                share = n // procs + (1 if i < n % procs else 0)
                recv, send = ctx.Pipe(duplex=False)
                worker = ctx.Process(
                    target=_client_process, args=(socket_path, share, seconds, warmup, batch, send)
                )
                worker.start()
                pipes.append(recv)
                workers.append(worker)
            loop = asyncio.get_running_loop()
            results = [await loop.run_in_executor(None, p.recv) for p in pipes]
            for worker in workers:
                worker.join(30)
            acked = sum(r[0] for r in results)
            lat = [x for r in results for x in r[1]]
            client_cpu = sum(r[2] for r in results)
        srv1 = proc_cpu_seconds(server_pid)
        after = await probe.status()
    finally:
        await probe.close()
    elapsed = seconds
    lat.sort()
    batches = after["batches"] - before["batches"]
    total = after["appended"] - before["appended"]
    wall = seconds + warmup
    return {
        "clients": n,
        "entries_per_request": batch or 1,
        "acked_per_s": round(acked / elapsed),
        "p50_ms": round(percentile(lat, 0.50), 3),
        "p99_ms": round(percentile(lat, 0.99), 3),
        "p999_ms": round(percentile(lat, 0.999), 3),
        "mean_batch": round(total / batches, 1) if batches else 0.0,
        "fdatasyncs_per_s": round(batches / wall),
        "server_cpu": round((srv1 - srv0) / wall, 2),
        "client_cpu": round(client_cpu / wall, 2),
        "client_procs": procs,
    }


async def embedded_point(data_dir: str, n: int, seconds: float, warmup: float) -> dict[str, Any]:
    settings = load_settings(flags={"data_dir": data_dir, "socket_path": "unused"})
    journal = await Journal.open(settings)
    latencies: list[float] = []
    acked = 0
    loop = asyncio.get_running_loop()
    start_measure = loop.time() + warmup
    stop = start_measure + seconds

    async def one() -> None:
        nonlocal acked
        while True:
            t0 = time.perf_counter()
            await journal.append(new_request_id(), "NewOrder", COMMAND)
            now = loop.time()
            if now >= stop:
                return
            if now >= start_measure:
                latencies.append((time.perf_counter() - t0) * 1000)
                acked += 1

    cpu0 = self_cpu_seconds()
    b0 = journal.stats.batches
    await asyncio.gather(*(one() for _ in range(n)))
    cpu1 = self_cpu_seconds()
    batches = journal.stats.batches - b0
    await journal.close()
    latencies.sort()
    return {
        "clients": n,
        "mode": "embedded",
        "acked_per_s": round(acked / seconds),
        "p50_ms": round(percentile(latencies, 0.5), 3),
        "p99_ms": round(percentile(latencies, 0.99), 3),
        "p999_ms": round(percentile(latencies, 0.999), 3),
        "mean_batch": round(journal.stats.appended / journal.stats.batches, 1) if batches else 0,
        "fdatasyncs_per_s": round(batches / (seconds + warmup)),
        "process_cpu": round((cpu1 - cpu0) / (seconds + warmup), 2),
    }


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    work = tempfile.mkdtemp(prefix="ackwal-bench-", dir=args.dir)
    try:
        sock = os.path.join(work, "ackwal.sock")
        server = start_server(os.path.join(work, "data"), sock, args.sync_mode)
        try:
            for n in args.clients:
                row = await socket_point(
                    sock, server.pid, n, args.seconds, args.warmup, procs=args.client_procs
                )
                row["mode"] = "socket append"
                rows.append(row)
                print(row, flush=True)
            if args.batch:
                row = await socket_point(
                    sock, server.pid, 64, args.seconds, args.warmup, 64, args.client_procs
                )
                row["mode"] = "socket append_batch(64)"
                rows.append(row)
                print(row, flush=True)
        finally:
            server.terminate()
            server.wait(30)
        if args.embedded:
            row = await embedded_point(
                os.path.join(work, "embedded"), 64, args.seconds, args.warmup
            )
            rows.append(row)
            print(row, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rows


def main() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--clients", default="1,8,64,256")
    parser.add_argument("--no-batch", dest="batch", action="store_false")
    parser.add_argument(
        "--client-procs",
        type=int,
        default=1,
        help="spread the clients over this many processes (default 1, as compare.py does)",
    )
    parser.add_argument("--no-embedded", dest="embedded", action="store_false")
    parser.add_argument("--sync-mode", default="fdatasync", choices=["fdatasync", "fsync", "none"])
    parser.add_argument("--quick", action="store_true", help="1 s points, 1 and 64 clients")
    parser.add_argument("--dir", default=".", help="directory on the disk to measure")
    parser.add_argument("--json", default="benchmarks/results/service_load.json")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.warmup, args.clients = 1.0, 0.3, "1,64"
    args.clients = [int(x) for x in args.clients.split(",")]
    rows = uvloop.run(run(args))
    print()
    print_table(rows)
    os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(
            {
                "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                "seconds_per_point": args.seconds,
                "sync_mode": args.sync_mode,
                "rows": rows,
            },
            f,
            indent=2,
        )
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
