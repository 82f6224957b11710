"""How the journal hands a batch to the disk off the event loop: dedicated thread vs aiofiles.

The batcher must not block the event loop during write + fdatasync. Two ways, side by side in
one run, for the same batch sizes: (a) one ``run_in_executor`` call on a dedicated writer thread
that does pwrite + fdatasync (what service/journal.py does), (b) aiofiles: ``await f.write``,
``await f.flush`` and an fdatasync through ``aiofiles.os.wrap`` (three executor round trips).
While each runs, a ticker task measures how late the event loop wakes up (loop responsiveness).

    .venv/bin/python benchmarks/writer_offload.py [--seconds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import os
import shutil
import tempfile
import time

import aiofiles
import aiofiles.os
import uvloop

BATCH_BYTES = (284, 64 * 284, 1024 * 284)


async def ticker(stop: asyncio.Event, lags: list[float]) -> None:
    while not stop.is_set():
        t = time.perf_counter()
        await asyncio.sleep(0.001)
        lags.append(time.perf_counter() - t - 0.001)


async def run_thread(path: str, data: bytes, seconds: float) -> tuple[float, float]:
    loop = asyncio.get_running_loop()
    pool = concurrent.futures.ThreadPoolExecutor(1)
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    off = 0

    def write_and_sync(offset: int) -> None:
        os.pwrite(fd, data, offset)
        os.fdatasync(fd)

    stop = asyncio.Event()
    lags: list[float] = []
    tick = asyncio.create_task(ticker(stop, lags))
    n = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        await loop.run_in_executor(pool, write_and_sync, off)
        off += len(data)
        n += 1
    stop.set()
    await tick
    os.close(fd)
    pool.shutdown()
    lags.sort()
    return n / seconds, lags[int(0.99 * len(lags))] if lags else 0.0


async def run_aiofiles(path: str, data: bytes, seconds: float) -> tuple[float, float]:
    fdatasync = aiofiles.os.wrap(os.fdatasync)
    stop = asyncio.Event()
    lags: list[float] = []
    tick = asyncio.create_task(ticker(stop, lags))
    n = 0
    async with aiofiles.open(path, "wb", buffering=0) as f:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            await f.write(data)
            await f.flush()
            await fdatasync(f.fileno())
            n += 1
    stop.set()
    await tick
    lags.sort()
    return n / seconds, lags[int(0.99 * len(lags))] if lags else 0.0


async def main(seconds: float) -> None:
    work = tempfile.mkdtemp(prefix="ackwal-bench-", dir=".")
    try:
        print(
            "| batch bytes | thread batches/s | aiofiles batches/s | thread / aiofiles "
            "| loop lag p99 thread | loop lag p99 aiofiles |"
        )
        print("|---:|---:|---:|---:|---:|---:|")
        for nbytes in BATCH_BYTES:
            data = os.urandom(nbytes)
            a, lag_a = await run_thread(os.path.join(work, "a"), data, seconds)
            b, lag_b = await run_aiofiles(os.path.join(work, "b"), data, seconds)
            print(
                f"| {nbytes} | {a:,.0f} | {b:,.0f} | {a / b:.2f} | {lag_a * 1e3:.2f} ms "
                f"| {lag_b * 1e3:.2f} ms |",
                flush=True,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    uvloop.run(main(parser.parse_args().seconds))
