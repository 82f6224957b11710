"""Disk faults: a failing or full disk ends in fail-stop or a refusal to start, never a wrong ACK.

The server runs as a child process (tests/torture/faulty_disk_child.py: ``run_service`` over the
fault layer, so exit codes are the real ones) and a client appends one entry at a time until it
is refused. Each fault must end in the documented fail-stop: ``halted`` replies and exit code 70
(EIO on write, EIO on fdatasync, ENOSPC on write, ENOSPC creating a segment), or in a refusal to
start with a one-line reason and exit code 1 (a read error during recovery, a disk still full at
restart). A restart on a healthy disk then finds every acknowledged entry at its seq, at most
the refused request besides, and the refused request answered once when retried.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.app import EXIT_HALTED, EXIT_START_REFUSED
from service.client import ClientClosedError, JournalClient
from service.entry import decode_entry
from service.errors import HaltedError, ShuttingDownError
from tests.service.harness import (
    ServerProcess,
    bounded,
    command_for,
    make_settings,
    new_rid,
    serve,
    short_socket_path,
)
from tests.torture.conftest import report
from wal import RecordType

COMMAND_SIZE = 1500  # a 64 KiB segment holds about 40 entries: rotations happen


class FaultyDiskServer(ServerProcess):
    """The service over a disk that fails as ``fault`` says (op, errno, skip, path suffix)."""

    def __init__(self, data_dir: Path, socket_path: str, log_path: Path) -> None:
        super().__init__(data_dir, socket_path, log_path)
        self.preallocate = False
        self.fault: tuple[str, str, int, str] | None = None

    def argv(self) -> list[str]:
        argv = [sys.executable, "-m", "tests.torture.faulty_disk_child", str(self.data_dir)]
        argv += [self.socket_path, "1" if self.preallocate else "0"]
        if self.fault is not None:
            op, error, skip, suffix = self.fault
            argv += [op, error, str(skip), suffix]
        return argv

    def events(self) -> list[dict[str, object]]:
        out = []
        for line in self.log_text().splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))
        return out


@pytest.fixture
def server(tmp_path: Path) -> Iterator[FaultyDiskServer]:
    with short_socket_path() as sock:
        proc = FaultyDiskServer(tmp_path / "data", sock, tmp_path / "server.log")
        try:
            yield proc
        finally:
            proc.stop_quietly()


async def append_until_refused(sock: str, limit: int = 400) -> tuple[dict[bytes, int], bytes]:
    """Append one at a time; return the ACKs and the request id that drew ``halted``."""
    acked: dict[bytes, int] = {}
    step = bounded("appending until the fault halts the journal", 60)
    async with step, JournalClient(sock, reconnect=False) as client:
        for _ in range(limit):
            rid = new_rid()
            try:
                result = await client.append(rid, "t", command_for(rid, COMMAND_SIZE))
            except HaltedError:
                # Everything sent after the halt is refused too, never acknowledged.
                more = [new_rid() for _ in range(20)]
                outcomes = await asyncio.gather(
                    *(client.append(r, "t", command_for(r, COMMAND_SIZE)) for r in more),
                    return_exceptions=True,
                )
                allowed = (HaltedError, ShuttingDownError, ClientClosedError)
                assert all(isinstance(o, allowed) for o in outcomes), outcomes
                return acked, rid
            assert result.seq > max(acked.values(), default=0) and not result.duplicate
            acked[rid] = result.seq
    raise AssertionError(f"{limit} appends and no fault fired")


async def restart_and_check(
    server: FaultyDiskServer, acked: dict[bytes, int], refused: bytes | None
) -> int:
    """A healthy disk: every ACK at its seq, at most the refused request besides; retry it.
    Returns the number of entries recovered."""
    settings = make_settings(server.data_dir, server.socket_path, segment_size=64 * 1024)
    step = bounded("restarting on a healthy disk and checking the log", 60)
    async with step, serve(settings.replace(max_record_size=16 * 1024)) as service:
        journal = service.journals["main"]
        records = journal.read_records(1, 100_000, 1 << 62)
        assert [r.seq for r in records] == list(range(1, len(records) + 1))
        # The service's own records (run markers) may sit between entries.
        log = [decode_entry(r.seq, r.payload) for r in records if r.type == RecordType.ENTRY]
        assert len(log) >= len(acked), "the log is shorter than what was acknowledged"
        for e in log[: len(acked)]:
            assert acked.get(e.request_id) == e.seq, f"seq {e.seq} is not the acknowledged entry"
            assert e.command == command_for(e.request_id, COMMAND_SIZE)
        extra = [e.request_id for e in log[len(acked) :]]
        assert extra in ([], [refused]), "entries nobody was told about, other than the refused"
        if refused is not None:
            async with JournalClient(server.socket_path, reconnect=False) as client:
                again = await client.append(refused, "t", command_for(refused, COMMAND_SIZE))
            assert again.duplicate == bool(extra)
            if extra:
                assert again.seq == log[-1].seq
        return len(log)


FAIL_STOP = {
    "EIO on write": (False, ("write", "EIO", 20, ".wal"), "Input/output error"),
    "EIO on fdatasync": (False, ("fdatasync", "EIO", 20, ".wal"), "Input/output error"),
    "ENOSPC on write": (False, ("write", "ENOSPC", 20, ".wal"), "disk full"),
    "ENOSPC creating a segment": (False, ("create", "ENOSPC", 1, ".wal.tmp"), "disk full"),
    "ENOSPC creating a preallocated segment": (
        True,
        ("create", "ENOSPC", 1, ".wal.tmp"),
        "disk full",
    ),
}


@pytest.mark.parametrize(("preallocate", "fault", "says"), FAIL_STOP.values(), ids=list(FAIL_STOP))
async def test_a_disk_fault_ends_in_halted_replies_and_exit_70_and_every_ack_survives(
    server: FaultyDiskServer, preallocate: bool, fault: tuple[str, str, int, str], says: str
) -> None:
    server.preallocate = preallocate
    server.fault = fault
    await server.start_ready()
    acked, refused = await append_until_refused(server.socket_path)
    assert await server.wait() == EXIT_HALTED
    halts = [e for e in server.events() if e.get("event") == "journal.halted"]
    assert len(halts) == 1 and says in str(halts[0]["reason"]), halts
    n = await restart_and_check(server, acked, refused)
    how = f"{fault[0]} {fault[1]}{' (preallocated)' if preallocate else ''}"
    report(
        f"disk fault {how}: halted after {len(acked)} ACKs, exit 70, "
        f"restart kept {len(acked)} ACKed (+{n - len(acked)} unacknowledged)"
    )


async def test_a_disk_still_full_at_restart_refuses_to_start_and_freeing_space_recovers(
    server: FaultyDiskServer,
) -> None:
    server.fault = ("write", "ENOSPC", 20, ".wal")
    await server.start_ready()
    acked, refused = await append_until_refused(server.socket_path)
    assert await server.wait() == EXIT_HALTED
    # Restart while the disk is still full: recovery must rewrite the tail and cannot.
    server.fault = ("write", "ENOSPC", 0, ".wal")
    server.start()
    assert await server.wait() == EXIT_START_REFUSED
    refusals = [e for e in server.events() if e.get("event") == "service.start_refused"]
    assert len(refusals) == 1 and "No space left on device" in str(refusals[0]["error"])
    assert '"service.ready"' not in server.log_text()
    # Space freed: the restart recovers every acknowledged entry.
    server.fault = None
    n = await restart_and_check(server, acked, refused)
    report(f"disk full: refused to start while full, then recovered {n} entries after freeing")


async def test_a_read_error_during_recovery_refuses_to_start_with_the_reason(
    server: FaultyDiskServer,
) -> None:
    await server.start_ready()
    acked, _ = await append_some(server.socket_path, 30)
    server.signal(15)
    assert await server.wait() == 0
    server.fault = ("read", "EIO", 0, ".wal")
    server.start()
    assert await server.wait() == EXIT_START_REFUSED
    refusals = [e for e in server.events() if e.get("event") == "service.start_refused"]
    assert len(refusals) == 1 and "Input/output error" in str(refusals[0]["error"]), refusals
    server.fault = None
    assert await restart_and_check(server, acked, None) == len(acked)


async def append_some(sock: str, n: int) -> tuple[dict[bytes, int], None]:
    acked: dict[bytes, int] = {}
    step = bounded(f"appending {n} entries", 60)
    async with step, JournalClient(sock, reconnect=False) as client:
        for _ in range(n):
            rid = new_rid()
            acked[rid] = (await client.append(rid, "t", command_for(rid, COMMAND_SIZE))).seq
    return acked, None
