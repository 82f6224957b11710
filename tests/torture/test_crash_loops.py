"""Crash loops: ``ackwal serve`` killed with SIGKILL at random moments under load, then restarted.

Each cycle: start the server, check the log against everything clients were ever told, run
appending clients (10% of their appends are retries of request ids sent before, acknowledged
or not) and subscribers (one catching up from history, one live), SIGKILL at a random moment.
After every restart: every acknowledged request id is in the log exactly once with its seq and
bytes, seqs are gap-free, every retry got its original seq, every subscriber saw exactly the
log's records from where it subscribed, and recovery (the ``journal.opened`` log line's
``recovery_seconds``) stayed within its bound. Short: 25 cycles; ``ACKWAL_TORTURE=long``: 500.

The kill tests in tests/service/test_crash.py check the same rule with fewer cycles and no
subscribers; this one runs long, checks the log incrementally (in full every 10 cycles) and
uses the same ``ServerProcess`` harness.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.client import ClientClosedError, JournalClient
from service.entry import AppendResult, entry_from_wire
from tests.service.harness import (
    RawConnection,
    ServerProcess,
    bounded,
    command_for,
    new_rid,
    short_socket_path,
)
from tests.torture.conftest import report, size
from wal import RecordType

RECOVERY_BOUND = 5.0  # seconds: recovery of this small log takes milliseconds
READY_BOUND = 20.0  # seconds from exec to service.ready (interpreter start included)
FULL_CHECK_EVERY = size(10, 50)


class Model:
    """What clients were told, and the log as verified so far."""

    def __init__(self) -> None:
        self.seq_of: dict[bytes, int] = {}  # every request id ever acknowledged -> its seq
        self.sent: list[bytes] = []  # every request id ever sent (retry candidates)
        self.log: list[bytes | None] = []  # request id at seq i+1 (None: a service record)
        self.where: dict[bytes, int] = {}  # request id -> seq in the log
        self.retries = 0
        self.retries_answered = 0
        self.sub_records = 0

    def told(self, rid: bytes, result: AppendResult, known_before: bool) -> None:
        """A reply: its seq must match every earlier answer for the same request id."""
        seen = self.seq_of.get(rid)
        if seen is not None:
            assert result.seq == seen, f"request id answered with seq {result.seq}, then {seen}"
        if known_before:
            assert result.duplicate, "a retry of an acknowledged append was written again"
        self.seq_of[rid] = result.seq

    def extend(self, records: list[dict[str, Any]]) -> None:
        """Records (every type) read back in order: seqs gap-free, entries intact and unique."""
        for record in records:
            seq = record["seq"]
            assert seq == len(self.log) + 1, f"gap or reorder in the log at seq {seq}"
            if record["type"] != RecordType.ENTRY:
                self.log.append(None)  # the service's own records (runs, marks)
                continue
            e = entry_from_wire(record)
            assert e.request_id not in self.where, f"request id written twice (seq {seq})"
            assert e.command == command_for(e.request_id), f"bytes changed at seq {seq}"
            self.log.append(e.request_id)
            self.where[e.request_id] = seq

    def check_acked(self) -> None:
        for rid, seq in self.seq_of.items():
            found = self.where.get(rid)
            assert found is not None, f"acknowledged seq {seq} is not in the log"
            assert found == seq, f"acknowledged seq {seq} is at seq {found}"


async def read_from(conn: RawConnection, from_seq: int) -> list[dict[str, Any]]:
    """Every record from ``from_seq`` on, of every type (the client's read keeps entries only)."""
    out: list[dict[str, Any]] = []
    while True:
        reply = await conn.request({"op": "read", "from_seq": from_seq + len(out), "limit": 10_000})
        if not reply["records"]:
            return out
        out.extend(reply["records"])


async def check_log(sock: str, model: Model, full: bool) -> None:
    """Read what is new since the last check (or everything) and check it against the model."""
    conn = await RawConnection.open(sock)
    try:
        if full:
            records = await read_from(conn, 1)
            again = [r["seq"] for r in records[: len(model.log)]]
            assert again == list(range(1, len(model.log) + 1)), "the log got shorter"
            known = [
                entry_from_wire(r).request_id if r["type"] == RecordType.ENTRY else None
                for r in records[: len(model.log)]
            ]
            assert known == model.log, "the log changed"
            model.extend(records[len(model.log) :])
        else:
            model.extend(await read_from(conn, len(model.log) + 1))
    finally:
        await conn.close()
    model.check_acked()


class Cycle:
    """One cycle's clients: appenders with retries, and subscribers."""

    def __init__(self, sock: str, model: Model, rng: random.Random, last_seq: int) -> None:
        self.sock = sock
        self.model = model
        self.rng = rng
        self.stop = asyncio.Event()
        self.subs: list[tuple[int, list[tuple[int, bytes]]]] = [
            (max(1, last_seq - rng.randint(0, 300)), []),  # catches up, then live
            (last_seq + 1, []),  # live from the start
        ]

    async def run(self, appenders: int = 4, window: int = 8) -> None:
        clients: list[JournalClient] = []
        try:
            for _ in range(3):
                clients.append(await JournalClient.connect(self.sock, reconnect=False))
        except OSError:  # ConnectionError included: the kill came while connecting
            for client in clients:
                await client.close()
            return
        try:
            await asyncio.gather(
                *(self._append(clients[i % 2], window) for i in range(appenders)),
                *(self._subscribe(clients[2], from_seq, seen) for from_seq, seen in self.subs),
            )
        finally:
            for client in clients:
                await client.close()

    def _pick(self) -> tuple[bytes, bool]:
        model = self.model
        if model.sent and self.rng.random() < 0.1:
            rid = self.rng.choice(model.sent)
            model.retries += 1
            return rid, rid in model.seq_of
        rid = new_rid()
        model.sent.append(rid)
        return rid, False

    async def _append(self, client: JournalClient, window: int) -> None:
        while not self.stop.is_set():
            picks = [self._pick() for _ in range(window)]
            results = await asyncio.gather(
                *(client.append(rid, "t", command_for(rid)) for rid, _ in picks),
                return_exceptions=True,
            )
            for (rid, known), result in zip(picks, results, strict=True):
                if isinstance(result, BaseException):
                    assert isinstance(result, ClientClosedError), result
                    self.stop.set()
                else:
                    self.model.retries_answered += known
                    self.model.told(rid, result, known)

    async def _subscribe(
        self, client: JournalClient, from_seq: int, seen: list[tuple[int, bytes]]
    ) -> None:
        try:
            async for entry in client.subscribe(from_seq):
                seen.append((entry.seq, entry.request_id))
        except ConnectionError:  # ClientClosedError included: the server was killed
            self.stop.set()

    def check_subscribers(self) -> None:
        """Each subscriber saw exactly the log's records from its start: a gap-free prefix."""
        log = self.model.log
        for from_seq, seen in self.subs:
            entries = [(s, rid) for s, rid in enumerate(log, 1) if s >= from_seq and rid]
            expected = entries[: len(seen)]
            assert seen == expected, f"subscriber from seq {from_seq} saw a gap or a foreign record"
            self.model.sub_records += len(seen)


def recovery_seconds(server: ServerProcess) -> float:
    for line in server.log_text().splitlines():
        if '"journal.opened"' in line:
            return float(json.loads(line)["recovery_seconds"])
    raise AssertionError(f"no journal.opened line:\n{server.log_text()}")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    with short_socket_path() as sock:
        proc = ServerProcess(tmp_path / "data", sock, tmp_path / "server.log")
        try:
            yield proc
        finally:
            proc.stop_quietly()


async def test_every_ack_survives_sigkill_loops_with_retries_and_subscribers(
    server: ServerProcess,
) -> None:
    cycles = size(25, 500)
    seed = int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    model = Model()
    worst_recovery = worst_ready = 0.0
    killed_under_load = 0
    previous: Cycle | None = None
    started = time.monotonic()
    for n in range(cycles + 1):
        t0 = time.monotonic()
        await server.start_ready()
        worst_ready = max(worst_ready, time.monotonic() - t0)
        took = recovery_seconds(server)
        worst_recovery = max(worst_recovery, took)
        assert took < RECOVERY_BOUND, f"recovery took {took:.3f}s (seed {seed})"
        await check_log(server.socket_path, model, full=n % FULL_CHECK_EVERY == 0 or n == cycles)
        if previous is not None:
            previous.check_subscribers()
        if n == cycles:
            break
        cycle = Cycle(server.socket_path, model, rng, len(model.log))
        # The long run keeps each cycle lighter so the log (re-scanned at every start) stays
        # around half a million entries.
        running = asyncio.create_task(cycle.run(appenders=size(4, 2), window=size(8, 4)))
        await asyncio.sleep(rng.uniform(0.05, 0.4))
        killed_under_load += not running.done()
        await server.kill9()
        async with bounded(f"cycle {n}: the clients ending after the kill (seed {seed})", 30):
            await running
        previous = cycle
    assert worst_ready < READY_BOUND
    assert killed_under_load >= cycles * 3 // 4, "the kills did not land under load"
    server.signal(signal.SIGTERM)
    assert await server.wait() == 0
    report(
        f"crash loops: {cycles} SIGKILL cycles in {time.monotonic() - started:.0f}s, "
        f"{len(model.seq_of)} ACKed request ids verified ({len(model.where)} entries in the log), "
        f"{model.retries} retries sent ({model.retries_answered} of acknowledged ids, all "
        f"answered with their original seq), {model.sub_records} subscriber records checked, "
        f"worst recovery {worst_recovery * 1000:.1f} ms, worst start-to-ready {worst_ready:.2f}s "
        f"(seed {seed})"
    )
