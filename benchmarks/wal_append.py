"""WAL append throughput against the disk's own write+fdatasync limit, side by side in one run.

For each batch size: records/s, MB/s and fdatasyncs/s of ``Wal.append`` with 256-byte payloads,
and in the same run the raw limit: a loop of ``os.pwrite`` + ``os.fdatasync`` of the same byte
count, on a growing file and on a zero-filled (preallocated) one. Prints a table and writes JSON.

    .venv/bin/python benchmarks/wal_append.py [--seconds 2] [--dir DIR] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import tempfile
import time
from typing import Any

import structlog

from wal import Wal, WalOptions
from wal.format import RECORD_HEADER_SIZE

BATCH_SIZES = (1, 16, 64, 256, 1024)
PAYLOAD = 256


def bench_wal(directory: str, batch: int, seconds: float) -> dict[str, float]:
    path = tempfile.mkdtemp(dir=directory)
    try:
        opts = WalOptions(segment_size=256 * 1024 * 1024)
        with Wal.open(path, opts) as wal:
            payloads = [os.urandom(PAYLOAD) for _ in range(batch)]
            wal.append(payloads)  # creates the segment (and waits for its preallocation)
            batches = 0
            start = time.perf_counter()
            deadline = start + seconds
            while time.perf_counter() < deadline:
                wal.append(payloads)
                batches += 1
            elapsed = time.perf_counter() - start
    finally:
        shutil.rmtree(path, ignore_errors=True)
    records = batches * batch
    return {
        "records_per_s": records / elapsed,
        "mb_per_s": records * (PAYLOAD + RECORD_HEADER_SIZE) / elapsed / 1e6,
        "syncs_per_s": batches / elapsed,
    }


def bench_raw(directory: str, nbytes: int, seconds: float, preallocated: bool) -> dict[str, float]:
    path = os.path.join(directory, "raw.bin")
    fd = os.open(path, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o644)
    data = os.urandom(nbytes)
    try:
        if preallocated:
            size = 256 * 1024 * 1024
            zero = bytes(1024 * 1024)
            for off in range(0, size, len(zero)):
                os.pwrite(fd, zero, off)
            os.fsync(fd)
        off = 0
        syncs = 0
        start = time.perf_counter()
        deadline = start + seconds
        while time.perf_counter() < deadline:
            os.pwrite(fd, data, off)
            os.fdatasync(fd)
            off += nbytes
            syncs += 1
        elapsed = time.perf_counter() - start
    finally:
        os.close(fd)
        os.unlink(path)
    return {"syncs_per_s": syncs / elapsed, "mb_per_s": syncs * nbytes / elapsed / 1e6}


def main() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="duration of each point")
    parser.add_argument("--dir", default=".", help="directory on the disk to measure")
    parser.add_argument("--json", default="benchmarks/results/wal_append.json")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="ackwal-bench-", dir=args.dir)
    rows: list[dict[str, Any]] = []
    try:
        for batch in BATCH_SIZES:
            nbytes = batch * (PAYLOAD + RECORD_HEADER_SIZE)
            wal = bench_wal(work, batch, args.seconds)
            grow = bench_raw(work, nbytes, args.seconds, preallocated=False)
            pre = bench_raw(work, nbytes, args.seconds, preallocated=True)
            row = {
                "batch": batch,
                "wal_records_per_s": round(wal["records_per_s"]),
                "wal_mb_per_s": round(wal["mb_per_s"], 1),
                "wal_syncs_per_s": round(wal["syncs_per_s"]),
                "raw_growing_syncs_per_s": round(grow["syncs_per_s"]),
                "raw_prealloc_syncs_per_s": round(pre["syncs_per_s"]),
                "wal_vs_raw_prealloc": round(wal["syncs_per_s"] / pre["syncs_per_s"], 3),
                "wal_vs_raw_growing": round(wal["syncs_per_s"] / grow["syncs_per_s"], 3),
            }
            rows.append(row)
            print(
                f"batch {batch:>5}: wal {row['wal_records_per_s']:>9,} rec/s "
                f"{row['wal_mb_per_s']:>7} MB/s {row['wal_syncs_per_s']:>6,} syncs/s | raw "
                f"growing {row['raw_growing_syncs_per_s']:>6,}/s prealloc "
                f"{row['raw_prealloc_syncs_per_s']:>6,}/s | wal/raw-prealloc "
                f"{row['wal_vs_raw_prealloc']:.2f}",
                flush=True,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print()
    print(
        "| batch | WAL records/s | WAL MB/s | WAL fdatasync/s | raw growing fdatasync/s "
        "| raw preallocated fdatasync/s | WAL / raw preallocated |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['batch']} | {r['wal_records_per_s']:,} | {r['wal_mb_per_s']} | "
            f"{r['wal_syncs_per_s']:,} | {r['raw_growing_syncs_per_s']:,} | "
            f"{r['raw_prealloc_syncs_per_s']:,} | {r['wal_vs_raw_prealloc']:.2f} |"
        )
    os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(
            {
                "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                "payload_bytes": PAYLOAD,
                "seconds_per_point": args.seconds,
                "rows": rows,
            },
            f,
            indent=2,
        )
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
