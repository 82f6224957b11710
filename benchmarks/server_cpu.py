"""The server's CPU per entry, in one process: for comparing two versions of the hot path.

A real Journal (real WAL, real fdatasync) and real Connection objects handle pre-built request
frames fed straight to ``data_received``; their transports only count the replies. With no
socket, no client process and no scheduler between them, the CPU time per entry varies far less
between runs than the closed-loop rate over the socket (service_load.py) does on a shared
machine. The figure includes building the requests here (the same for both sides of a
comparison). Compare two trees by running each in turn, alternating (ABBA), e.g.:

    PYTHONPATH=/path/to/other/tree .venv/bin/python benchmarks/server_cpu.py --batch 64
    .venv/bin/python benchmarks/server_cpu.py --batch 64

and take the mean and the minimum of each side over several rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import tempfile
import time
from typing import Any

import structlog
import uvloop
from common import COMMAND, new_request_id

from service.app import settle_gc
from service.connection import Connection
from service.journal import Journal
from service.protocol import encode_frame
from service.server import Server
from service.settings import load_settings


class CountingTransport:
    """Stands in for the socket: counts the replies written, keeps nothing."""

    def __init__(self) -> None:
        self.replies = 0

    def write(self, data: bytes) -> None:
        self.replies += 1

    def is_closing(self) -> bool:
        return False

    def set_write_buffer_limits(self, high: int) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass


def request(n: int, batch: int) -> bytes:
    if batch:
        entries = [
            {"request_id": new_request_id(), "command_type": "NewOrder", "command": COMMAND}
            for _ in range(batch)
        ]
        return encode_frame({"op": "append_batch", "id": n, "entries": entries})
    return encode_frame(
        {
            "op": "append",
            "id": n,
            "request_id": new_request_id(),
            "command_type": "NewOrder",
            "command": COMMAND,
        }
    )


async def run(args: argparse.Namespace) -> dict[str, Any]:
    work = tempfile.mkdtemp(prefix="ackwal-cpu-", dir=args.dir)
    try:
        settings = load_settings(
            env={}, flags={"data_dir": work, "socket_path": os.path.join(work, "unused.sock")}
        )
        journal = await Journal.open(settings)
        server = Server(settings, {"main": journal})
        server.refused_peer_uid = lambda transport: None  # type: ignore[method-assign]
        conns: list[tuple[Connection, CountingTransport]] = []
        for _ in range(args.connections):
            conn, transport = Connection(server), CountingTransport()
            conn.connection_made(transport)  # type: ignore[arg-type]
            conn.data_received(encode_frame({"op": "hello", "id": 0, "version": 1}))
            conns.append((conn, transport))
        if args.settle_gc:
            settle_gc()
        per_request = args.batch or 1
        sent = [1] * len(conns)  # the hello's reply counts as one
        total = 0
        n = 1
        cpu0, wall0 = time.process_time(), time.perf_counter()
        while total < args.total:  # closed loop: a connection sends again once answered
            for i, (conn, transport) in enumerate(conns):
                if transport.replies >= sent[i] and total < args.total:
                    conn.data_received(request(n, args.batch))
                    sent[i] += 1
                    n += 1
                    total += per_request
            await asyncio.sleep(0)
        while any(t.replies < sent[i] for i, (_, t) in enumerate(conns)):
            await asyncio.sleep(0.001)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        batches = journal.stats.batches
        await journal.close()
        return {
            "entries": total,
            "entries_per_request": per_request,
            "cpu_us_per_entry": round(cpu / total * 1e6, 2),
            "entries_per_s": round(total / wall),
            "mean_batch": round(total / batches, 1) if batches else 0,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64, help="entries per append_batch; 0: append")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--total", type=int, default=400_000, help="entries to append")
    parser.add_argument(
        "--no-settle-gc",
        dest="settle_gc",
        action="store_false",
        help="leave the GC as it is (the service settles it once started)",
    )
    parser.add_argument("--dir", default=".", help="directory on the disk to measure")
    args = parser.parse_args()
    print(uvloop.run(run(args)))


if __name__ == "__main__":
    main()
