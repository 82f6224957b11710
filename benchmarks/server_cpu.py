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
import functools
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
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
    """Stands in for the socket: counts the replies written, keeps nothing, and tells the
    driver (``on_reply``) so that the connection's next request goes without polling."""

    def __init__(self) -> None:
        self.replies = 0
        self.on_reply: Callable[[], None] | None = None

    def write(self, data: bytes) -> None:
        self.replies += 1
        if self.on_reply is not None:
            self.on_reply()

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


async def closed_loop(
    conns: list[tuple[Connection, CountingTransport]], batch: int, total: int
) -> tuple[int, float, float]:
    """Each connection sends its next request once its reply is written, until ``total``
    entries are sent and answered. Returns (entries, CPU seconds, wall seconds).

    Driven by the replies (a loop callback per reply), not by polling: the polling driver this
    replaced burned CPU while each batch synced, which swamped the figure for single appends
    (~60 us per entry; 8.6-10.8 us with this driver on the compiled build, 64 connections)."""
    loop = asyncio.get_running_loop()
    finished: asyncio.Future[None] = loop.create_future()
    per_request = batch or 1
    sent = outstanding = 0
    next_id = 1

    def send(conn: Connection) -> None:
        nonlocal sent, outstanding, next_id
        if sent >= total:
            if outstanding == 0 and not finished.done():
                finished.set_result(None)
            return
        outstanding += 1
        sent += per_request
        next_id += 1
        conn.data_received(request(next_id - 1, batch))

    def replied(conn: Connection) -> None:
        nonlocal outstanding
        outstanding -= 1
        loop.call_soon(send, conn)  # not from inside the server's flush

    cpu0, wall0 = time.process_time(), time.perf_counter()
    for conn, transport in conns:
        transport.on_reply = functools.partial(replied, conn)
        send(conn)
    await finished
    return sent, time.process_time() - cpu0, time.perf_counter() - wall0


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
        await asyncio.sleep(0)  # the hellos' replies leave at the end of the loop turn
        assert all(t.replies == 1 for _, t in conns), "a hello was not answered"
        if args.settle_gc:
            settle_gc()
        total, cpu, wall = await closed_loop(conns, args.batch, args.total)
        batches = journal.stats.batches
        await journal.close()
        return {
            "entries": total,
            "entries_per_request": args.batch or 1,
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
