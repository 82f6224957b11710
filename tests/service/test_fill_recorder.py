"""examples/fill_recorder.py: every fill recorded exactly once, whoever is killed and when."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.client import JournalClient
from tests.service.harness import ROOT, ServerProcess, new_rid, short_socket_path

RECORDER = ROOT / "examples" / "fill_recorder.py"


class RecorderProcess:
    """The fill recorder as a child process, as it would run next to ackwal."""

    def __init__(self, socket_path: str, db: Path, log: Path) -> None:
        self.argv = [sys.executable, str(RECORDER), "--socket", socket_path, "--db", str(db),
                     "--cursor", "fills", "--commit-interval", "0.05"]  # fmt: skip
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.argv, stderr=out, stdout=out, cwd=str(ROOT))

    async def wait(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            assert time.monotonic() < deadline, "fill recorder did not exit"
            await asyncio.sleep(0.01)
        return self.proc.returncode

    async def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        await self.wait()

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]

    def stop_quietly(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def sock() -> Iterator[str]:
    with short_socket_path() as path:
        yield path


def fill_events(n: int, fills: int) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = [{"type": "OrderAccepted", "key": str(n), "data": b"a"}]
    for i in range(fills):
        events.append({"type": "OrderFilled", "key": str(n), "data": f"fill-{n}-{i}".encode()})
        events.append({"type": "BookUpdated", "key": None, "data": b"b"})
    return events


def recorded(db: Path) -> list[tuple[int, int, bytes]]:
    if not db.exists():
        return []
    con = sqlite3.connect(db, timeout=5)
    try:
        return list(con.execute("SELECT seq, idx, data FROM fills ORDER BY seq, idx"))
    except sqlite3.OperationalError:
        return []  # the table is not there yet
    finally:
        con.close()


async def journal_fills(socket_path: str) -> tuple[list[tuple[int, int, bytes]], int]:
    """Every OrderFilled event in the journal as (seq, index, data), and the last entry's seq."""
    out = []
    last = 0
    async with JournalClient(socket_path) as client:
        from_seq = 1
        while page := await client.read(from_seq, 10_000):
            for entry in page:
                last = entry.seq
                for i, e in enumerate(entry.events):
                    if e["type"] == "OrderFilled":
                        out.append((entry.seq, i, e["data"]))
            from_seq = page[-1].seq + 1
    return out, last


async def wait_recorded(db: Path, expected: list[tuple[int, int, bytes]]) -> None:
    deadline = time.monotonic() + 30
    while recorded(db) != expected:
        assert time.monotonic() < deadline, "the recorder did not catch up"
        await asyncio.sleep(0.05)


async def test_every_fill_is_recorded_once_while_the_consumer_and_the_service_are_killed(
    tmp_path: Path, sock: str
) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    server = ServerProcess(tmp_path / "data", sock, tmp_path / "server.log")
    db = tmp_path / "fills.sqlite"
    recorder = RecorderProcess(sock, db, tmp_path / "recorder.log")
    acked: set[bytes] = set()
    stop = asyncio.Event()

    async def appender(worker: int) -> None:
        async with JournalClient(sock, reconnect_timeout=60) as client:
            n = 0
            while not stop.is_set():
                n += 1
                events = fill_events(worker * 1_000_000 + n, rng.randrange(4))
                await client.append(new_rid(), "Fill", b"cmd", events=events)
                acked.update(e["data"] for e in events if e["type"] == "OrderFilled")

    try:
        await server.start_ready()
        recorder.start()
        appenders = [asyncio.create_task(appender(w)) for w in range(2)]
        kills = {"consumer": 0, "service": 0}
        plans = [["consumer"], ["service"], ["consumer", "service"]]
        for cycle in range(8):
            await asyncio.sleep(rng.uniform(0.1, 0.4))
            victims = plans[cycle] if cycle < len(plans) else rng.choice(plans)
            if "consumer" in victims:
                await recorder.kill9()
                kills["consumer"] += 1
            if "service" in victims:
                await server.kill9()
                kills["service"] += 1
                await asyncio.sleep(rng.uniform(0, 0.1))
                await server.start_ready()
            if "consumer" in victims:
                recorder.start()
        stop.set()
        await asyncio.wait_for(asyncio.gather(*appenders), 60)
        # The last entry carries a fill, so that once every fill is in SQLite the recorder has
        # seen every entry: trailing entries without fills could otherwise still be on their
        # way at SIGTERM, and the cursor it commits on the way out would stop short of them.
        async with JournalClient(sock) as client:
            await client.append(new_rid(), "Fill", b"cmd", events=fill_events(0, 1))
        expected, last_entry = await journal_fills(sock)
        await wait_recorded(db, expected)
        recorder.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        assert await recorder.wait() == 0
        rows = recorded(db)
        assert rows == expected, f"seed {seed}"
        datas = [data for _, _, data in rows]
        assert len(datas) == len(set(datas)), f"a fill recorded twice (seed {seed})"
        assert acked <= set(datas), f"an ACKed fill is missing (seed {seed})"
        stopped = [line for line in recorder.lines() if line["event"] == "stopped"][-1]
        assert stopped["cursor_seq"] == last_entry  # committed after the last SQLite commit
        async with JournalClient(sock) as client:
            assert (await client.cursors())["fills"] == last_entry
        assert kills["consumer"] >= 2 and kills["service"] >= 2 and len(acked) > 0
    finally:
        stop.set()
        recorder.stop_quietly()
        server.stop_quietly()


async def test_a_failing_sink_is_retried_until_every_fill_is_recorded(
    tmp_path: Path, sock: str
) -> None:
    server = ServerProcess(tmp_path / "data", sock, tmp_path / "server.log")
    db = tmp_path / "fills.sqlite"
    recorder = RecorderProcess(sock, db, tmp_path / "recorder.log")
    try:
        await server.start_ready()
        recorder.start()
        async with JournalClient(sock) as client:
            for n in range(10):
                await client.append(new_rid(), "Fill", b"c", events=fill_events(n, 2))
            await wait_recorded(db, (await journal_fills(sock))[0])
            # A real sink failure: another writer holds the database locked for a while.
            blocker = sqlite3.connect(db, isolation_level=None)
            blocker.execute("BEGIN EXCLUSIVE")
            for n in range(10, 20):
                await client.append(new_rid(), "Fill", b"c", events=fill_events(n, 1))
            await asyncio.sleep(0.5)
            blocker.execute("ROLLBACK")
            blocker.close()
            expected, last_entry = await journal_fills(sock)
            await wait_recorded(db, expected)
        os.kill(recorder.proc.pid, signal.SIGINT)  # type: ignore[union-attr]
        assert await recorder.wait() == 0
        lines = recorder.lines()
        assert any(line["event"] == "sink_failed" for line in lines)
        stopped = [line for line in lines if line["event"] == "stopped"][-1]
        assert stopped["sink_failures"] > 0
        assert stopped["fills"] == 2 * 10 + 10 and stopped["cursor_seq"] == last_entry
        assert recorded(db) == expected
    finally:
        recorder.stop_quietly()
        server.stop_quietly()
