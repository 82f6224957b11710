"""Retention: whole segments deleted in the background, never one that the newest snapshot, a
durable cursor or the active segment still needs; reads below the first retained seq say where
the journal now starts; ``max_journal_bytes`` refuses appends with ``journal_full`` until space
is freed. Real files, real sockets, small segments so that rotation happens."""

from __future__ import annotations

import asyncio
import os
import struct
from pathlib import Path
from typing import Any

import pytest

from service.app import Service
from service.client import JournalClient
from service.errors import AckwalError, HaltedError, JournalFullError, OutOfRangeError
from service.fanout import SubscriberSink
from service.metrics import AckwalCollector
from tests.service.conftest import RunningService
from tests.service.harness import new_rid
from tests.service.test_snapshots import Ledger, replay, state_blob
from wal import Record, Wal, WalOptions
from wal.faultfs import FaultyFileLayer, FsCall, Phase, PowerLossError
from wal.reader import SeqOutOfRangeError
from wal.verify import verify

SMALL: dict[str, Any] = {
    "segment_size": 64 * 1024,
    "max_record_size": 16 * 1024,
    "preallocate": False,
    "retention_interval": 0.05,
}


async def fill(client: JournalClient, n: int, size: int = 1000) -> int:
    """Append ``n`` entries of about ``size`` bytes in batches of 16; return the last seq."""
    last = 0
    for start in range(0, n, 16):
        batch = [
            {"request_id": new_rid(), "command_type": "Pad", "command": os.urandom(size)}
            for _ in range(min(16, n - start))
        ]
        last = (await client.append_batch(batch))[-1].seq
    return last


def metric(svc: Service, name: str) -> float:
    for family in AckwalCollector(svc).collect():
        for sample in family.samples:
            if sample.name == name and sample.labels.get("journal") == "main":
                return float(sample.value)
    raise AssertionError(f"no metric {name}")


async def eventually(check: Any, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


# -- the WAL -----------------------------------------------------------------------------------


def small_wal(path: Path, fs: Any = None) -> Wal:
    options = WalOptions(segment_size=64 * 1024, max_record_size=16 * 1024, preallocate=False)
    return Wal.open(str(path), options) if fs is None else Wal.open(str(path), options, fs=fs)


def test_deleting_segments_removes_whole_segments_below_the_seq_and_never_the_active_one(
    tmp_path: Path,
) -> None:
    with small_wal(tmp_path) as wal:
        for _ in range(40):
            wal.append([os.urandom(1000) for _ in range(8)])
        segs = wal.segments()
        assert len(segs) >= 5
        cut = segs[2].first_seq + 1  # inside the third segment: it stays
        deleted = wal.delete_segments_before(cut)
        assert deleted == [s.path for s in segs[:2]]
        assert not any(os.path.exists(p) for p in deleted)
        assert wal.first_seq == segs[2].first_seq
        with pytest.raises(SeqOutOfRangeError, match=f"first available seq is {wal.first_seq}"):
            next(iter(wal.read(1)))
        with pytest.raises(SeqOutOfRangeError):
            wal.get(1)
        assert [r.seq for r in wal.read(wal.first_seq, wal.first_seq + 2)] == [
            wal.first_seq + i for i in range(3)
        ]
        wal.delete_segments_before(10**9)  # everything below the end: the active one stays
        assert [s.path for s in wal.segments()] == [segs[-1].path]
        last, head = wal.last_seq, wal.chain_head
        wal.append([b"after deletion"])
    with small_wal(tmp_path) as wal:  # a log that starts above seq 1 recovers and verifies
        assert (wal.first_seq, wal.last_seq) == (segs[-1].first_seq, last + 1)
        assert wal.get(last + 1) is not None and wal.get(last) is not None
    report = verify(str(tmp_path))
    assert report.status == "clean", report
    assert head != 0


def test_segment_deletion_cut_by_power_at_any_step_leaves_a_log_that_opens(
    tmp_path: Path,
) -> None:
    dry = FaultyFileLayer()
    with small_wal(tmp_path / "dry", dry) as wal:
        for _ in range(20):
            wal.append([os.urandom(1000) for _ in range(8)])
        before = len(dry.calls)
        wal.delete_segments_before(wal.last_seq)
        steps = len(dry.calls) - before
    for step in range(steps):
        root = tmp_path / str(step)
        fs = FaultyFileLayer()
        wal = small_wal(root, fs)
        for _ in range(20):
            wal.append([os.urandom(1000) for _ in range(8)])
        last = wal.last_seq
        target = len(fs.calls) + step

        def hook(call: FsCall, at: Phase, fs: FaultyFileLayer = fs, target: int = target) -> None:
            if at == "before" and len(fs.calls) - 1 == target:
                fs.power_cut()

        fs.hook = hook
        with pytest.raises(PowerLossError):
            wal.delete_segments_before(last)
        fs.hook = None
        fs.power_on()
        wal.close()
        with small_wal(root) as reopened:  # some, all or none of the segments went
            assert reopened.last_seq == last
            assert list(reopened.read(reopened.first_seq))[-1].seq == last


# -- the service -------------------------------------------------------------------------------


async def test_full_retention_keeps_every_segment(running_service: RunningService) -> None:
    async with (
        running_service(**SMALL) as svc,
        JournalClient(svc.settings.socket_path) as client,
    ):
        last = await fill(client, 400)
        await client.snapshot_put(last, b"state")
        journal = svc.journals["main"]
        await journal.retention.run_once()
        assert journal.wal.first_seq == 1
        assert metric(svc, "ackwal_retention_deleted_segments_total") == 0


async def test_keep_last_segments_deletes_old_segments_in_the_background_and_shows_it(
    running_service: RunningService,
) -> None:
    async with (
        running_service(**SMALL, retention="keep_last_segments", retention_segments=2) as svc,
        JournalClient(svc.settings.socket_path) as client,
    ):
        await fill(client, 500)
        wal = svc.journals["main"].wal
        deleted = "ackwal_retention_deleted_segments_total"
        # Passes run while appends go on; wait for one after the last append (and its count).
        await eventually(lambda: len(wal.segments()) <= 3 and metric(svc, deleted) >= 4)
        assert wal.first_seq > 1
        assert metric(svc, "ackwal_wal_first_seq") == wal.first_seq
        assert (await client.status())["first_seq"] == wal.first_seq


async def test_read_below_the_first_retained_seq_is_out_of_range_naming_it(
    running_service: RunningService,
) -> None:
    async with (
        running_service(**SMALL, retention="keep_last_segments", retention_segments=1) as svc,
        JournalClient(svc.settings.socket_path) as client,
    ):
        rid = new_rid()
        old = await client.append(rid, "Old", b"x", response=b"done")
        await fill(client, 400)
        journal = svc.journals["main"]
        await journal.retention.run_once()
        first = journal.wal.first_seq
        assert first > old.seq
        with pytest.raises(OutOfRangeError, match=f"first available seq is {first}"):
            await client.read(1)
        with pytest.raises(OutOfRangeError, match=f"first available seq is {first}"):
            async for _ in client.subscribe(from_seq=old.seq):
                pass
        assert (await client.read(first, 1))[0].seq == first
        # The idempotency index still knows the deleted entry: a retry is a duplicate.
        again = await client.append(rid, "Old", b"x")
        assert (again.seq, again.duplicate, again.response) == (old.seq, True, None)
        assert await client.lookup(rid) is None  # its record is gone


async def test_snapshot_anchored_deletes_only_segments_wholly_below_the_anchor(
    running_service: RunningService,
) -> None:
    async with (
        running_service(**SMALL, retention="snapshot_anchored") as svc,
        JournalClient(svc.settings.socket_path) as client,
    ):
        ledger = Ledger()
        await ledger.append(client, 5)
        await fill(client, 300)
        anchor = await ledger.append(client, 5)
        await fill(client, 300)
        last = await ledger.append(client, 5)
        wal = svc.journals["main"].wal
        holding = [s for s in wal.segments() if s.first_seq <= anchor + 1 <= s.last_seq]
        assert holding and holding[0].first_seq > 1
        assert wal.first_seq == 1  # no snapshot yet: nothing may go
        await client.snapshot_put(anchor, state_blob(ledger.total(anchor)))
        await eventually(lambda: wal.first_seq > 1)
        assert wal.first_seq == holding[0].first_seq  # exactly the segments below
        rec = await client.recover()
        assert await replay(rec, last) == ledger.total(last)


async def test_deletion_never_removes_a_segment_the_newest_snapshot_still_needs(
    running_service: RunningService,
) -> None:
    async with (
        running_service(**SMALL, retention="keep_last_segments", retention_segments=1) as svc,
        JournalClient(svc.settings.socket_path) as client,
    ):
        ledger = Ledger()
        await fill(client, 100)
        anchor = await ledger.append(client, 3)
        await client.snapshot_put(anchor, state_blob(ledger.total(anchor)))
        await fill(client, 500)
        last = await ledger.append(client, 3)
        journal = svc.journals["main"]
        await journal.retention.run_once()
        assert 1 < journal.wal.first_seq <= anchor + 1
        rec = await client.recover()
        assert await replay(rec, last) == ledger.total(last)


async def test_durable_cursor_holds_back_retention_unless_configured_not_to(
    running_service: RunningService,
) -> None:
    async with (
        running_service(**SMALL, retention="snapshot_anchored") as svc,
        JournalClient(svc.settings.socket_path) as client,
    ):
        cursor_seq = await fill(client, 50)
        await client.cursor_commit("recorder", cursor_seq)
        last = await fill(client, 500)
        await client.snapshot_put(last, b"state")
        journal = svc.journals["main"]
        await journal.retention.run_once()
        assert 1 < journal.wal.first_seq <= cursor_seq + 1
    async with running_service(
        **SMALL, retention="snapshot_anchored", retention_ignore_cursors=True
    ) as svc:
        journal = svc.journals["main"]
        await journal.retention.run_once()
        assert journal.wal.first_seq > cursor_seq + 1


@pytest.mark.parametrize("mode", ["full", "keep_last_segments", "snapshot_anchored"])
async def test_restart_cycles_with_snapshots_rebuild_the_same_state_in_every_retention_mode(
    running_service: RunningService, mode: str
) -> None:
    ledger = Ledger()
    for _cycle in range(3):
        async with running_service(**SMALL, retention=mode, retention_segments=2) as svc:
            journal = svc.journals["main"]
            async with JournalClient(svc.settings.socket_path) as client:
                rec = await client.recover()
                upto = max(ledger.amounts, default=0)
                assert await replay(rec, upto) == ledger.total(upto)
                await fill(client, 150)
                anchor = await ledger.append(client, 4)
                await client.snapshot_put(anchor, state_blob(ledger.total(anchor)))
                await fill(client, 150)
                await ledger.append(client, 4)
                await journal.retention.run_once()
                assert journal.wal.first_seq <= anchor + 1
                if mode == "full":
                    assert journal.wal.first_seq == 1
                else:
                    assert journal.wal.first_seq > 1


async def test_journal_full_refuses_appends_and_they_resume_once_space_is_freed(
    running_service: RunningService,
) -> None:
    limit = 4 * 64 * 1024
    async with running_service(
        **SMALL, retention="snapshot_anchored", max_journal_bytes=limit
    ) as svc:
        journal = svc.journals["main"]
        async with JournalClient(svc.settings.socket_path) as client:
            early = new_rid()
            last = (await client.append(early, "Pad", b"first")).seq
            with pytest.raises(JournalFullError, match="max_journal_bytes") as refused:
                for _ in range(2000):
                    last = (await client.append(new_rid(), "Pad", os.urandom(1000))).seq
            assert not isinstance(refused.value, HaltedError) and journal.halted is None
            assert (await client.status())["journal_full"] is True
            assert metric(svc, "ackwal_journal_full") == 1
            retry = await client.append(early, "Pad", b"first")  # stored already: not refused
            assert retry.duplicate
            # Still full on the next pass: nothing can be deleted without a snapshot.
            await journal.retention.run_once()
            with pytest.raises(JournalFullError):
                await client.append(new_rid(), "Pad", b"x")
            await client.snapshot_put(last, b"state")  # the operator's way out
            await eventually(lambda: journal.full is None)
            assert metric(svc, "ackwal_journal_full") == 0
            assert (await client.append(new_rid(), "Pad", struct.pack("<q", 1))).seq > last


class StalledReader:
    """A subscriber that never has room: its subscription stays where it started.

    A :class:`SubscriberSink` by shape: the protocol may be compiled, and interpreted classes
    cannot inherit from compiled ones."""

    def __init__(self) -> None:
        self.room = asyncio.Event()

    def push(self, sub_id: Any, first_seq: int, record_type: int, payloads: list[bytes]) -> None:
        raise AssertionError("nothing is pushed to a reader without room")

    def push_records(self, sub_id: Any, records: list[Record]) -> None:
        raise AssertionError("nothing is pushed to a reader without room")

    def can_push(self) -> bool:
        return False

    async def wait_writable(self) -> None:
        await self.room.wait()

    def end(self, sub_id: Any, error: AckwalError) -> None:
        pass


async def test_a_subscriber_still_catching_up_holds_back_retention(
    running_service: RunningService,
) -> None:
    async with (
        running_service(
            **{**SMALL, "retention_interval": 3600.0},  # only the passes run below
            retention="keep_last_segments",
            retention_segments=1,
        ) as svc,
        JournalClient(svc.settings.socket_path) as client,
    ):
        journal = svc.journals["main"]
        await fill(client, 300)
        reader: SubscriberSink = StalledReader()
        sub = journal.fanout.subscribe(reader, 1, 2)
        await journal.retention.run_once()
        assert journal.wal.first_seq <= 2
        journal.fanout.unsubscribe(sub)
        await journal.retention.run_once()
        assert journal.wal.first_seq > 2
