"""Event persistence modes side by side: WAL bytes per record and appends/s (real fdatasync).

    python benchmarks/event_modes.py [--seconds 3] [--clients 64] [--dir /path/on/the/disk]

Each entry carries a 256-byte command and a typical event list: OrderAccepted (120 B of data),
two OrderFilled (80 B each) and BookUpdated (400 B). ``critical`` rows keep OrderFilled in full.
Runs the embedded journal (no socket) so that the figure isolates what the mode stores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Any

from common import COMMAND, new_request_id, print_table

from service.journal import Journal
from service.settings import load_settings

EVENTS = [
    {"type": "OrderAccepted", "key": "order-1", "data": os.urandom(120)},
    {"type": "OrderFilled", "key": "order-1", "data": os.urandom(80)},
    {"type": "OrderFilled", "key": "order-1", "data": os.urandom(80)},
    {"type": "BookUpdated", "key": "XBTUSD", "data": os.urandom(400)},
]
MODES = [
    ("full", ""),
    ("summary", ""),
    ("summary", "OrderFilled"),
    ("none", ""),
    ("none", "OrderFilled"),
]


async def point(
    base: str, mode: str, critical: str, clients: int, seconds: float
) -> dict[str, Any]:
    data_dir = tempfile.mkdtemp(prefix=f"ev-{mode}-", dir=base)
    settings = load_settings(
        env={},
        flags={
            "data_dir": data_dir,
            "socket_path": "unused",
            "metrics_addr": "",
            "event_persistence": mode,
            "critical_event_types": critical,
        },
    )
    journal = await Journal.open(settings)
    loop = asyncio.get_running_loop()
    stop = loop.time() + seconds
    acked = 0

    async def one() -> None:
        nonlocal acked
        while loop.time() < stop:
            await journal.append(new_request_id(), "NewOrder", COMMAND, events=EVENTS)
            acked += 1

    bytes0 = journal.stats.bytes_written
    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(clients)))
    elapsed = time.perf_counter() - t0
    payload = journal.stats.bytes_written - bytes0
    await journal.close()
    shutil.rmtree(data_dir, ignore_errors=True)
    return {
        "mode": mode,
        "critical": critical or "-",
        "payload_bytes_per_record": round(payload / acked, 1),
        "wal_bytes_per_record": round(payload / acked + 28, 1),  # + the record header
        "appends_per_s": round(acked / elapsed),
    }


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    base = args.dir or tempfile.mkdtemp(prefix="ackwal-event-modes-", dir=os.getcwd())
    os.makedirs(base, exist_ok=True)
    rows = []
    for mode, critical in MODES:
        rows.append(await point(base, mode, critical, args.clients, args.seconds))
    if not args.dir:
        shutil.rmtree(base, ignore_errors=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--dir", help="where the WALs go (default: a temp dir under the cwd)")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    rows = asyncio.run(run(args))
    print_table(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
