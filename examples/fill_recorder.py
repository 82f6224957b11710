"""A downstream consumer: record every ``OrderFilled`` event into SQLite, exactly once.

    python examples/fill_recorder.py --socket run/ackwal.sock --db fills.sqlite

How it never misses or doubles a fill, whoever crashes:
* it follows the journal with a durable cursor (``subscribe(cursor=...)``): after a crash of
  this process or of ackwal it resumes right after the last seq it committed;
* it commits the cursor only after the SQLite transaction holding those fills committed, so a
  committed cursor never covers an unrecorded fill;
* the rows are keyed by (seq, event index), and inserted with ``INSERT OR IGNORE``: entries
  replayed between the last cursor commit and a crash are recorded again harmlessly.

When the sink fails (disk full, database locked, I/O error) it logs, counts, and retries the same
entry with exponential backoff: it never skips ahead, so a fill is late rather than lost.
SIGTERM or SIGINT stop it cleanly: the entry in hand is finished, the cursor committed, exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sqlite3
import sys
import time
from typing import Any

from service.client import ClientClosedError, JournalClient
from service.entry import StoredEntry
from service.errors import AckwalError, OutOfRangeError
from service.logs import configure_logging

SCHEMA = """
CREATE TABLE IF NOT EXISTS fills (
    seq INTEGER NOT NULL,         -- the journal seq of the entry that emitted the fill
    idx INTEGER NOT NULL,         -- the event's index in that entry's events
    key TEXT,
    data BLOB NOT NULL,
    request_id BLOB NOT NULL,
    PRIMARY KEY (seq, idx)
)
"""


def emit(event: str, **fields: Any) -> None:
    """One JSON line on stderr (what a log shipper would collect)."""
    print(json.dumps({"event": event, "ts": round(time.time(), 3), **fields}), file=sys.stderr)


class FillRecorder:
    def __init__(self, socket_path: str, db_path: str, cursor: str, interval: float) -> None:
        self.socket_path = socket_path
        self.cursor = cursor
        self.interval = interval
        self.db = sqlite3.connect(db_path, timeout=0, isolation_level=None)
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute(SCHEMA)
        self.recorded_seq = 0  # last seq whose fills are committed in SQLite
        self.committed_seq = 0  # last seq committed to the cursor
        self.fills = 0
        self.entries = 0
        self.sink_failures = 0
        self.stop = asyncio.Event()
        self.client: JournalClient | None = None

    # -- the sink -----------------------------------------------------------------------------

    def _write(self, entry: StoredEntry, rows: list[tuple[Any, ...]]) -> None:
        try:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.executemany("INSERT OR IGNORE INTO fills VALUES (?, ?, ?, ?, ?)", rows)
            self.db.execute("COMMIT")
        except BaseException:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise

    async def record(self, entry: StoredEntry) -> None:
        """Record the entry's fills, retrying a failing sink with backoff until it works."""
        rows = [
            (entry.seq, i, e.get("key"), e.get("data", b""), entry.request_id)
            for i, e in enumerate(entry.events)
            if e.get("type") == "OrderFilled"
        ]
        delay = 0.05
        while rows:
            try:
                self._write(entry, rows)
                self.fills += len(rows)
                break
            except sqlite3.Error as exc:
                self.sink_failures += 1
                emit("sink_failed", seq=entry.seq, error=str(exc), failures=self.sink_failures,
                     retry_in=delay)  # fmt: skip
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        self.entries += 1
        self.recorded_seq = entry.seq

    # -- the journal side ---------------------------------------------------------------------

    async def commit_cursor(self) -> None:
        if self.client is not None and self.recorded_seq > self.committed_seq:
            seq = self.recorded_seq
            await self.client.cursor_commit(self.cursor, seq)
            self.committed_seq = seq

    async def _committer(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.commit_cursor()
            except (AckwalError, ConnectionError) as exc:
                emit("cursor_commit_failed", error=str(exc))  # retried at the next tick

    async def follow(self) -> None:
        client = self.client = await JournalClient.connect(
            self.socket_path, reconnect_timeout=3600.0
        )
        committer = asyncio.create_task(self._committer())
        try:
            async for entry in client.subscribe(cursor=self.cursor):
                await self.record(entry)
        finally:
            committer.cancel()
            await asyncio.wait([committer])

    async def run(self) -> int:
        delay = 0.05
        while not self.stop.is_set():
            task = asyncio.create_task(self.follow())
            stopper = asyncio.create_task(self.stop.wait())
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if not task.done():
                task.cancel()  # lands at an await: never inside a SQLite transaction
            try:
                await task
            except asyncio.CancelledError:
                pass
            except OutOfRangeError as exc:
                emit("cursor_no_longer_retained", error=str(exc))
                return 2
            except (OSError, ConnectionError, ClientClosedError, AckwalError) as exc:
                emit("journal_unavailable", error=str(exc), retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            finally:
                await self._close_client()
        return 0

    async def _close_client(self) -> None:
        client, self.client = self.client, None
        if client is None:
            return
        try:
            if not self.stop.is_set():
                return
            if self.recorded_seq > self.committed_seq:
                self.client = client
                await asyncio.wait_for(self.commit_cursor(), 5.0)
        except (AckwalError, ConnectionError, TimeoutError) as exc:
            emit("final_cursor_commit_failed", error=str(exc))
        finally:
            self.client = None
            await client.close()


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--socket", default="run/ackwal.sock", help="ackwal's Unix socket")
    parser.add_argument("--db", default="fills.sqlite", help="the SQLite database to fill")
    parser.add_argument("--cursor", default="fill-recorder", help="durable cursor name")
    parser.add_argument("--commit-interval", type=float, default=0.2,
                        help="seconds between cursor commits")  # fmt: skip
    args = parser.parse_args(argv)
    configure_logging("json")  # the client library's lines too, one JSON object each
    recorder = FillRecorder(args.socket, args.db, args.cursor, args.commit_interval)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, recorder.stop.set)
    emit("started", cursor=args.cursor, db=args.db)
    code = await recorder.run()
    recorder.db.close()
    emit(
        "stopped",
        exit_code=code,
        entries=recorder.entries,
        fills=recorder.fills,
        sink_failures=recorder.sink_failures,
        cursor_seq=recorder.committed_seq,
    )
    return code


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
