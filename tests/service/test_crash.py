"""The server as an operator runs it: killed with SIGKILL, stopped with SIGTERM/SIGINT, halted.

``ackwal serve`` runs as a child process on real files with real fdatasync; clients load it
over its Unix socket. What a client was told is the model: every acknowledged append must be
there after any crash, with its bytes, and a retry must return its original seq.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import os
import random
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.app import EXIT_HALTED, Service
from service.client import ClientClosedError, JournalClient
from service.entry import AppendResult
from service.errors import HaltedError, ShuttingDownError
from tests.service.conftest import RunningService
from tests.service.harness import (
    RawConnection,
    ServerProcess,
    assert_gap_free,
    command_for,
    entries_of,
    new_rid,
    read_log,
)
from wal.faultfs import FaultyFileLayer

Outcome = AppendResult | BaseException


@pytest.fixture
def server(tmp_path: Path, running_service: RunningService) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path / "data", str(tmp_path / "unset"), tmp_path / "server.log")
    try:
        yield proc
    finally:
        proc.stop_quietly()


@pytest.fixture
async def sock(running_service: RunningService, server: ServerProcess) -> str:
    """The shared fixture's short socket path, handed to the server process."""
    async with running_service() as service:
        path = service.settings.socket_path
    server.socket_path = path
    return path


class Load:
    """Clients keeping a window of appends (and batches) in flight until the server goes away."""

    def __init__(self, sock: str, clients: int = 4, window: int = 32, pace: float = 0.0) -> None:
        self.sock = sock
        self.n_clients = clients
        self.window = window
        self.pace = pace  # seconds each client waits between windows
        self.outcomes: dict[bytes, Outcome] = {}
        self.stop = asyncio.Event()

    async def run(self) -> None:
        clients = [
            await JournalClient.connect(self.sock, reconnect=False) for _ in range(self.n_clients)
        ]
        try:
            await asyncio.gather(
                *(self._appends(c) for c in clients[1:]), self._batches(clients[0])
            )
        finally:
            for client in clients:
                await client.close()

    def _record(self, rids: list[bytes], results: list[Outcome]) -> None:
        for rid, result in zip(rids, results, strict=True):
            self.outcomes[rid] = result
            if isinstance(result, BaseException):
                assert isinstance(result, (ShuttingDownError, ClientClosedError)), result
                self.stop.set()

    async def _appends(self, client: JournalClient) -> None:
        while not self.stop.is_set():
            rids = [new_rid() for _ in range(self.window)]
            results = await asyncio.gather(
                *(client.append(rid, "t", command_for(rid)) for rid in rids),
                return_exceptions=True,
            )
            self._record(rids, list(results))
            await asyncio.sleep(self.pace)

    async def _batches(self, client: JournalClient) -> None:
        while not self.stop.is_set():
            rids = [new_rid() for _ in range(16)]
            entries = [
                {"request_id": r, "command_type": "b", "command": command_for(r)} for r in rids
            ]
            try:
                results: list[Outcome] = list(await client.append_batch(entries))
            except (ShuttingDownError, ClientClosedError) as exc:
                results = [exc] * len(rids)
            self._record(rids, results)
            await asyncio.sleep(self.pace)

    @property
    def acked(self) -> dict[bytes, int]:
        return {r: o.seq for r, o in self.outcomes.items() if isinstance(o, AppendResult)}

    @property
    def unanswered(self) -> list[bytes]:
        return [r for r, o in self.outcomes.items() if isinstance(o, ClientClosedError)]


async def check_log(client: JournalClient, acked: dict[bytes, int]) -> dict[bytes, int]:
    """Every acknowledged append is there with its bytes; seqs gap-free; no request id twice."""
    records = await read_log(client.socket_path)
    assert_gap_free(records)
    log = entries_of(records)
    where = {e.request_id: e for e in log}
    assert len(where) == len(log), "a request id was written twice"
    for rid, seq in acked.items():
        found = where.get(rid)
        assert found is not None, f"acknowledged seq {seq} is gone"
        assert (found.seq, found.command) == (seq, command_for(rid))
    return {rid: e.seq for rid, e in where.items()}


async def kill_cycles(
    server: ServerProcess,
    sock: str,
    cycles: int,
    seed: int,
    *,
    clients: int = 3,
    window: int = 16,
    pace: float = 0.0,
) -> None:
    rng = random.Random(seed)
    acked: dict[bytes, int] = {}
    last_acked: list[bytes] = []
    unanswered: list[bytes] = []
    killed_with_unanswered = 0
    for _ in range(cycles):
        await server.start_ready()
        async with JournalClient(sock, reconnect=False) as client:
            present = await check_log(client, acked)
            # Retry all that the last run acknowledged or left unanswered, and a sample of
            # what earlier runs acknowledged (every one of them is retried at the end).
            older = rng.sample(sorted(acked), min(200, len(acked)))
            retries = list(dict.fromkeys(unanswered + last_acked + older))
            results = await asyncio.gather(
                *(client.append(rid, "t", command_for(rid)) for rid in retries)
            )
            for rid, result in zip(retries, results, strict=True):
                if rid in present:
                    assert (result.seq, result.duplicate) == (present[rid], True)
                else:  # an unanswered append that never reached the disk: now it does
                    assert not result.duplicate
                acked[rid] = result.seq
        load = Load(sock, clients=clients, window=window, pace=pace)
        running = asyncio.create_task(load.run())
        await asyncio.sleep(rng.uniform(0.05, 0.6))
        await server.kill9()
        await running
        acked.update(load.acked)
        killed_with_unanswered += bool(load.unanswered)
        last_acked, unanswered = list(load.acked), load.unanswered
    assert killed_with_unanswered >= cycles // 2, "the kills did not land under load"
    await server.start_ready()
    async with JournalClient(sock, reconnect=False) as client:
        await check_log(client, acked)
        everything = list(acked)
        results = await asyncio.gather(
            *(client.append(rid, "t", command_for(rid)) for rid in everything)
        )
        assert [(r.seq, r.duplicate) for r in results] == [(acked[r], True) for r in everything]
    server.signal(signal.SIGTERM)
    assert await server.wait() == 0


async def test_every_ack_survives_ten_sigkills_under_load_and_retries_get_the_original_seq(
    server: ServerProcess, sock: str
) -> None:
    seed = int.from_bytes(os.urandom(4), "little")
    await kill_cycles(server, sock, cycles=10, seed=seed, clients=3, window=16, pace=0.002)


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("ACKWAL_SLOW_TESTS"), reason="a minute or two: set ACKWAL_SLOW_TESTS=1"
)
async def test_every_ack_survives_forty_sigkills_under_load(
    server: ServerProcess, sock: str
) -> None:
    # A paced load: each restart re-reads the whole log, so the log must stay small.
    seed = int.from_bytes(os.urandom(4), "little")
    await kill_cycles(server, sock, cycles=40, seed=seed, clients=3, window=8, pace=0.01)


async def test_sigterm_under_load_answers_every_request_keeps_every_ack_and_exits_0(
    server: ServerProcess, sock: str
) -> None:
    await server.start_ready()
    load = Load(sock, clients=8, window=64)
    running = asyncio.create_task(load.run())
    while len(load.outcomes) < 3000:
        await asyncio.sleep(0.005)
    server.signal(signal.SIGTERM)
    await running
    assert await server.wait() == 0
    kinds = collections.Counter(type(o).__name__ for o in load.outcomes.values())
    assert set(kinds) == {"AppendResult", "ShuttingDownError"}, kinds  # none unanswered
    assert '"service.stopped"' in server.log_text()
    await server.start_ready()
    async with JournalClient(sock, reconnect=False) as client:
        present = await check_log(client, load.acked)
    assert present == load.acked  # and nothing that was refused was written


async def test_a_second_sigint_forces_exit_during_a_slow_shutdown(
    server: ServerProcess, sock: str
) -> None:
    await server.start_ready()
    async with JournalClient(sock, reconnect=False) as client:
        for _ in range(4):
            await asyncio.gather(
                *(client.append(new_rid(), "big", os.urandom(30_000)) for _ in range(10))
            )
        # A client that never reads: the shutdown waits to flush its replies.
        deaf = await RawConnection.open(sock)
        deaf.send(*({"op": "read", "id": n, "from_seq": 1, "limit": 40} for n in range(40)))
        await client.status()
        await asyncio.sleep(0.2)
    server.signal(signal.SIGINT)
    await asyncio.sleep(0.5)
    assert server.proc is not None
    assert server.proc.poll() is None, "the first SIGINT starts a graceful shutdown"
    server.signal(signal.SIGINT)
    assert await server.wait(timeout=3) == 130
    assert '"service.forced_exit"' in server.log_text()
    await deaf.close()


async def test_a_failed_fdatasync_is_answered_halted_then_run_returns_exit_code_70(
    running_service: RunningService,
) -> None:
    async with running_service() as service:
        settings = service.settings
    fs = FaultyFileLayer()
    service = Service(settings.replace(exit_on_halt=True), fs=fs)
    run = asyncio.create_task(service.run())
    await service.ready.wait()
    async with JournalClient(settings.socket_path, reconnect=False) as client:
        kept_rid = new_rid()
        kept = await client.append(kept_rid, "t", b"kept")
        fs.fail_next("fdatasync", errno.EIO)
        halted = [new_rid() for _ in range(50)]
        outcomes = await asyncio.gather(
            *(client.append(rid, "t", b"?") for rid in halted), return_exceptions=True
        )
        # The replies went out before the service stopped: no ACK, and nothing left unanswered.
        assert all(isinstance(o, HaltedError) for o in outcomes), outcomes
        assert await asyncio.wait_for(run, 10) == EXIT_HALTED
    async with running_service() as service, JournalClient(settings.socket_path) as client:
        log = entries_of(await read_log(settings.socket_path))
        # The failed batch's bytes reached the page cache, so recovery may keep it: it was
        # never acknowledged, and retrying any of it is answered once.
        assert (log[0].seq, log[0].request_id) == (kept.seq, kept_rid)
        assert {e.request_id for e in log[1:]} <= set(halted)
        retried = await asyncio.gather(*(client.append(rid, "t", b"?") for rid in halted))
        assert len({r.seq for r in retried}) == len(halted)
        assert len(entries_of(await read_log(settings.socket_path))) == 1 + len(halted)


class StuckDiskServer(ServerProcess):
    """The service over a file layer whose first batch fdatasync never returns."""

    def argv(self) -> list[str]:
        child = "tests.service.stuck_disk_child"
        return [sys.executable, "-m", child, str(self.data_dir), self.socket_path]


@pytest.fixture
def stuck(tmp_path: Path, sock: str) -> Iterator[StuckDiskServer]:
    proc = StuckDiskServer(tmp_path / "stuck", sock, tmp_path / "stuck.log")
    try:
        yield proc
    finally:
        proc.stop_quietly()


async def test_a_writer_stuck_in_fdatasync_with_a_full_queue_halts_and_the_process_exits_70(
    stuck: StuckDiskServer, sock: str
) -> None:
    await stuck.start_ready()
    async with JournalClient(sock, reconnect=False) as client:
        first = asyncio.ensure_future(client.append(new_rid(), "t", b"x"))  # its sync hangs
        await asyncio.sleep(0.2)
        rest = [client.append(new_rid(), "t", b"x") for _ in range(20)]  # fill the queue
        outcomes = await asyncio.gather(first, *rest, return_exceptions=True)
    assert all(isinstance(o, HaltedError) for o in outcomes), outcomes
    assert await stuck.wait(timeout=10) == EXIT_HALTED  # although the fdatasync never returned
    assert '"service.exit_with_stuck_writer"' in stuck.log_text()


async def test_sigterm_while_the_writer_is_stuck_answers_halted_and_exits_70(
    stuck: StuckDiskServer, sock: str
) -> None:
    await stuck.start_ready()
    async with JournalClient(sock, reconnect=False) as client:
        first = asyncio.ensure_future(client.append(new_rid(), "t", b"x"))  # its sync hangs
        await asyncio.sleep(0.2)
        stuck.signal(signal.SIGTERM)
        with pytest.raises(HaltedError, match="shutdown timed out"):
            await asyncio.wait_for(first, 10)
    assert await stuck.wait(timeout=10) == EXIT_HALTED
