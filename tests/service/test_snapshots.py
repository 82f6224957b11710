"""Snapshots and ``recover`` over a real socket: stored atomically, streamed in chunks while
appends keep being ACKed, a corrupt newest snapshot passed over loudly, state rebuilt exactly."""

from __future__ import annotations

import asyncio
import os
import random
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import structlog

from service.client import JournalClient
from service.errors import AckwalError, BadRequestError, OutOfRangeError
from service.journal import Journal
from service.snapshots import Recovery
from tests.service.conftest import RunningService
from tests.service.harness import RawConnection, make_settings, new_rid, short_socket_path
from wal.faultfs import FaultyFileLayer
from wal.snapshot import SNAPSHOT_HEADER_SIZE, SnapshotStore

MiB = 1024 * 1024


class Ledger:
    """What the toy engine was sent: seq -> amount. Its state is the running total."""

    def __init__(self) -> None:
        self.amounts: dict[int, int] = {}
        self.n = 0

    async def append(self, client: JournalClient | Journal, count: int) -> int:
        """Append ``count`` commands; return the last seq."""
        seq = 0
        for _ in range(count):
            self.n += 1
            value = (self.n * 7919) % 1000 + 1
            seq = (await client.append(new_rid(), "Add", struct.pack("<q", value))).seq
            self.amounts[seq] = value
        return seq

    def total(self, upto: int) -> int:
        return sum(v for s, v in self.amounts.items() if s <= upto)


def state_blob(total: int, pad: int = 0) -> bytes:
    """The toy engine's state: a running total, optionally padded to make a big snapshot."""
    return struct.pack("<q", total) + random.Random(total).randbytes(pad)


async def replay(rec: Recovery, until_seq: int) -> int:
    """Rebuild the toy engine from a recovery: snapshot, then entries up to ``until_seq``."""
    total = struct.unpack_from("<q", rec.snapshot.data)[0] if rec.snapshot is not None else 0
    last = rec.from_seq - 1
    if until_seq >= rec.from_seq:
        async for entry in rec.entries:
            assert entry.seq > last  # in order, no duplicate
            last = entry.seq
            if entry.command_type == "Add":  # other commands only pad the log
                total += struct.unpack("<q", entry.command)[0]
            if entry.seq >= until_seq:
                break
    await rec.entries.aclose()  # type: ignore[attr-defined]
    return total


async def test_snapshot_put_then_get_round_trips(running_service: RunningService) -> None:
    async with running_service() as svc:
        client = await JournalClient.connect(svc.settings.socket_path)
        ledger = Ledger()
        try:
            assert await client.snapshot_get() is None
            last = await ledger.append(client, 10)
            info = await client.snapshot_put(last, state_blob(ledger.total(last)))
            assert (info.anchor_seq, info.size) == (last, 8)
            snap = await client.snapshot_get()
            assert snap is not None and snap.anchor_seq == last
            assert snap.data == state_blob(ledger.total(last)) and snap.skipped == []
            # An empty snapshot is a valid snapshot too; the same anchor is replaced.
            await client.snapshot_put(last, b"")
            again = await client.snapshot_get()
            assert again is not None and again.data == b""
        finally:
            await client.close()


async def test_multi_mib_snapshot_streams_while_appends_keep_being_acked(
    running_service: RunningService,
) -> None:
    async with running_service() as svc:
        client = await JournalClient.connect(svc.settings.socket_path)
        other = await JournalClient.connect(svc.settings.socket_path)
        acked: list[int] = []
        stop = asyncio.Event()

        async def appender() -> None:
            while not stop.is_set():
                acked.append((await other.append(new_rid(), "Add", b"x")).seq)

        task = asyncio.create_task(appender())
        try:
            while len(acked) < 3:
                await asyncio.sleep(0.01)
            blob = random.Random(1).randbytes(12 * MiB + 12345)

            async def pieces() -> AsyncIterator[bytes]:
                for start in range(0, len(blob), 300_000):  # not aligned with the wire chunks
                    yield blob[start : start + 300_000]

            anchor = acked[-1]
            before = len(acked)
            info = await client.snapshot_put(anchor, pieces())
            during_put = len(acked) - before
            assert info.size == len(blob) and info.anchor_seq == anchor
            before = len(acked)
            snap = await client.snapshot_get()
            during_get = len(acked) - before
            assert snap is not None and snap.data == blob
            # Appends were ACKed while the snapshot was being stored and while it was served.
            assert during_put > 0 and during_get > 0
        finally:
            stop.set()
            await task
            await client.close()
            await other.close()
        assert acked == sorted(set(acked))


async def test_recover_gives_the_snapshot_then_every_entry_after_its_anchor_then_live(
    running_service: RunningService,
) -> None:
    async with running_service() as svc:
        client = await JournalClient.connect(svc.settings.socket_path)
        ledger = Ledger()
        try:
            rec = await client.recover()  # nothing stored yet: every record from seq 1
            assert rec.snapshot is None and rec.from_seq == 1
            await rec.entries.aclose()  # type: ignore[attr-defined]
            anchor = await ledger.append(client, 30)
            await client.snapshot_put(anchor, state_blob(ledger.total(anchor), pad=5000))
            last = await ledger.append(client, 25)
            rec = await client.recover()
            assert rec.snapshot is not None and rec.snapshot.anchor_seq == anchor
            assert (rec.from_seq, rec.last_seq, rec.skipped) == (anchor + 1, last, [])
            assert await replay(rec, last) == ledger.total(last)
            # The stream goes live: an entry appended after recover arrives too.
            rec = await client.recover()
            newest = await ledger.append(client, 1)
            assert await replay(rec, newest) == ledger.total(newest)
        finally:
            await client.close()


async def test_corrupt_newest_snapshot_falls_back_to_the_previous_one_loudly(
    running_service: RunningService,
) -> None:
    async with running_service(snapshot_keep=3) as svc:
        client = await JournalClient.connect(svc.settings.socket_path)
        ledger = Ledger()
        try:
            older = await ledger.append(client, 10)
            newer = await ledger.append(client, 10)
            await client.snapshot_put(older, state_blob(ledger.total(older)))
            await client.snapshot_put(newer, state_blob(ledger.total(newer)))
            path = SnapshotStore(svc.settings.data_dir).path_of(newer)
            data = bytearray(Path(path).read_bytes())
            data[SNAPSHOT_HEADER_SIZE] ^= 0xFF
            Path(path).write_bytes(bytes(data))
            with structlog.testing.capture_logs() as logs:
                rec = await client.recover()
            assert rec.snapshot is not None and rec.snapshot.anchor_seq == older
            assert [s.anchor_seq for s in rec.skipped] == [newer]
            assert "CRC" in rec.skipped[0].reason
            assert await replay(rec, newer) == ledger.total(newer)
            snap = await client.snapshot_get()
            assert snap is not None and snap.anchor_seq == older and snap.skipped == rec.skipped
            warnings = [e for e in logs if e["event"] == "snapshot.corrupt_fallback"]
            assert warnings and warnings[0]["log_level"] == "warning"
        finally:
            await client.close()


async def test_snapshot_anchor_must_be_a_durable_seq(running_service: RunningService) -> None:
    async with running_service() as svc:
        client = await JournalClient.connect(svc.settings.socket_path)
        try:
            last = await Ledger().append(client, 3)
            with pytest.raises(BadRequestError, match="beyond the journal's last durable seq"):
                await client.snapshot_put(last + 1, b"state")
            with pytest.raises(BadRequestError):
                await client.snapshot_put(-1, b"state")
            assert await client.snapshot_get() is None
        finally:
            await client.close()


async def test_upload_checks_size_and_crc_and_stores_nothing_on_mismatch(
    running_service: RunningService,
) -> None:
    async with running_service() as svc:
        conn = await RawConnection.open(svc.settings.socket_path)
        try:
            begin = await conn.request({"op": "snapshot_begin", "anchor_seq": 0})
            upload = begin["upload"]
            chunk = await conn.request({"op": "snapshot_chunk", "upload": upload, "data": b"ab"})
            assert chunk["received"] == 2
            bad = await conn.request({"op": "snapshot_commit", "upload": upload, "size": 3})
            assert bad["error"]["code"] == "bad_request"
            late = await conn.request({"op": "snapshot_chunk", "upload": upload, "data": b"c"})
            assert late["error"]["code"] == "bad_request"
            snaps = os.path.join(svc.settings.data_dir, "snapshots")
            assert os.listdir(snaps) == []
        finally:
            await conn.close()


async def test_upload_abandoned_by_a_disconnect_leaves_no_temp_file(
    running_service: RunningService,
) -> None:
    async with running_service() as svc:
        conn = await RawConnection.open(svc.settings.socket_path)
        begin = await conn.request({"op": "snapshot_begin", "anchor_seq": 0})
        await conn.request({"op": "snapshot_chunk", "upload": begin["upload"], "data": b"x" * 1000})
        snaps = os.path.join(svc.settings.data_dir, "snapshots")
        assert [n.endswith(".tmp") for n in os.listdir(snaps)] == [True]
        await conn.close()
        for _ in range(200):
            if not os.listdir(snaps):
                break
            await asyncio.sleep(0.01)
        assert os.listdir(snaps) == []


async def test_snapshots_and_recover_survive_restart_cycles(
    running_service: RunningService,
) -> None:
    ledger = Ledger()
    anchors: list[int] = []
    for _cycle in range(3):
        async with running_service(snapshot_keep=2) as svc:
            client = await JournalClient.connect(svc.settings.socket_path)
            try:
                rec = await client.recover()
                assert rec.snapshot is None or rec.snapshot.anchor_seq == anchors[-1]
                upto = max(ledger.amounts, default=0)
                assert await replay(rec, upto) == ledger.total(upto)
                anchor = await ledger.append(client, 10)
                await ledger.append(client, 5)
                await client.snapshot_put(anchor, state_blob(ledger.total(anchor)))
                anchors.append(anchor)
            finally:
                await client.close()
        assert SnapshotStore(svc.settings.data_dir).anchors() == anchors[::-1][:2]


async def test_in_process_journal_stores_gets_and_recovers_snapshots(tmp_path: Path) -> None:
    with short_socket_path() as sock:
        settings = make_settings(tmp_path / "data", sock)
        journal = await Journal.open(settings)
        ledger = Ledger()
        try:
            anchor = await ledger.append(journal, 5)
            last = await ledger.append(journal, 2)
            blob = state_blob(ledger.total(anchor))

            async def chunks() -> AsyncIterator[bytes]:
                yield blob[:3]
                yield blob[3:]

            info = await journal.snapshot_put(anchor, chunks())
            assert info.anchor_seq == anchor
            snap = await journal.snapshot_get()
            assert snap is not None and snap.data == blob
            rec = await journal.recover()
            assert (rec.from_seq, rec.last_seq) == (anchor + 1, last)
            assert await replay(rec, last) == ledger.total(last)
            with pytest.raises(AckwalError):
                await journal.snapshot_put(last + 99, b"")
        finally:
            await journal.close()


async def test_recover_without_the_records_after_the_snapshot_is_out_of_range(
    running_service: RunningService,
) -> None:
    async with running_service(
        retention="keep_last_segments",
        retention_segments=1,
        segment_size=64 * 1024,
        max_record_size=16 * 1024,
    ) as svc:
        client = await JournalClient.connect(svc.settings.socket_path)
        try:
            journal = svc.journals["main"]
            for _ in range(200):
                await client.append(new_rid(), "Add", os.urandom(1024))
            await journal.retention.run_once()
            assert journal.wal.first_seq > 1  # no snapshot: nothing holds the old segments
            with pytest.raises(OutOfRangeError, match="first available seq"):
                await client.recover()
        finally:
            await client.close()


async def test_failed_snapshot_fsync_stores_nothing_and_appends_go_on(
    running_service: RunningService,
) -> None:
    fs = FaultyFileLayer()
    async with running_service(fs=fs) as svc:
        client = await JournalClient.connect(svc.settings.socket_path)
        ledger = Ledger()
        try:
            good = await ledger.append(client, 3)
            await client.snapshot_put(good, state_blob(ledger.total(good)))
            bad = await ledger.append(client, 3)
            fs.fail_next("fsync", when=lambda call: call.path.endswith(".snap.tmp"))
            with pytest.raises(AckwalError, match="snapshot commit failed"):
                await client.snapshot_put(bad, state_blob(ledger.total(bad)))
            snaps = os.path.join(svc.settings.data_dir, "snapshots")
            assert os.listdir(snaps) == [f"{good:020d}.snap"]
            snap = await client.snapshot_get()
            assert snap is not None and snap.anchor_seq == good
            # A snapshot is not the WAL: its failure does not stop the journal.
            assert (await client.append(new_rid(), "Add", struct.pack("<q", 1))).seq > bad
            assert svc.journals["main"].halted is None
        finally:
            await client.close()
