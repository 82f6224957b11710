"""The journal used in-process (no socket): the same guarantees as over the socket.

Fail-stop is driven by :class:`wal.faultfs.FaultyFileLayer` under the WAL, the only fake the
team allows; the journal, batcher and WAL above it run for real, with real fdatasync.
"""

from __future__ import annotations

import asyncio
import errno
import threading
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from service.entry import AppendResult, Event
from service.errors import HaltedError, ShuttingDownError
from service.journal import Journal
from service.settings import Settings
from tests.service.harness import command_for, make_settings, new_rid, response_for
from wal.faultfs import FaultyFileLayer, FsCall, Phase
from wal.fileio import OS_FILES, FileLayer
from wal.writer import SPARE_NAME


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path / "data", str(tmp_path / "unused.sock"))


async def open_journal(settings: Settings, fs: FileLayer = OS_FILES) -> Journal:
    return await Journal.open(settings, fs=fs)


async def append(journal: Journal, rid: bytes) -> AppendResult:
    return await journal.append(rid, "test.cmd", command_for(rid), response=response_for(rid))


def spare(call: FsCall) -> bool:
    """The spare segment's preparation syncs on a thread of its own: never the batch's sync."""
    return call.path.endswith(SPARE_NAME)


class HeldSync:
    """A file-layer hook that holds the next batch fdatasync until released (a slow disk)."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.armed = True

    def __call__(self, call: FsCall, phase: Phase) -> None:
        if call.op == "fdatasync" and phase == "before" and self.armed and not spare(call):
            self.armed = False
            self.entered.set()
            self.release.wait(10)

    async def wait_entered(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.entered.wait, 10)


async def settle() -> None:
    """Let the loop run the callbacks already scheduled (submissions reach the journal)."""
    for _ in range(5):
        await asyncio.sleep(0)


# -- the in-process API ------------------------------------------------------------------------


async def test_every_field_is_stored_and_returned_exactly_as_sent(settings: Settings) -> None:
    journal = await open_journal(settings)
    b = journal.last_seq  # the log may begin with service records (run markers)
    rid = uuid.uuid4()
    result = await journal.append(
        rid,
        "order.new",
        b"\x00\xffcommand",
        response=b"accepted",
        events=[Event("order.accepted", b"e1", key="BTC"), {"type": "fill", "data": b"e2"}],
        ts_ms=1_700_000_000_123,
        pre_digest=b"\x01" * 32,
        post_digest=b"\x02" * 32,
        duration_us=42,
    )
    assert result == AppendResult(b + 1, False, None)
    looked_up = await journal.lookup(rid)
    [read_back] = journal.read(1)
    assert looked_up == read_back
    assert looked_up is not None
    assert looked_up.request_uuid == rid
    assert (looked_up.command_type, looked_up.command, looked_up.response) == (
        "order.new",
        b"\x00\xffcommand",
        b"accepted",
    )
    assert looked_up.events == [
        {"type": "order.accepted", "key": "BTC", "data": b"e1"},
        {"type": "fill", "data": b"e2"},
    ]
    assert (looked_up.ts_ms, looked_up.duration_us) == (1_700_000_000_123, 42)
    assert (looked_up.pre_digest, looked_up.post_digest) == (b"\x01" * 32, b"\x02" * 32)
    assert await journal.lookup(uuid.uuid4()) is None
    await journal.close()


async def test_concurrent_in_process_appends_get_gap_free_seqs_in_call_order(
    settings: Settings,
) -> None:
    journal = await open_journal(settings)
    b = journal.last_seq
    rids = [new_rid() for _ in range(2000)]
    results = await asyncio.gather(*(append(journal, rid) for rid in rids))
    assert [r.seq for r in results] == list(range(b + 1, b + 2001))
    assert [e.request_id for e in journal.read(1, 5000)] == rids
    await journal.close()


async def test_a_duplicate_in_flight_in_process_gets_the_same_seq_and_one_record(
    settings: Settings,
) -> None:
    journal = await open_journal(settings)
    b = journal.last_seq
    rid = new_rid()
    first, second = await asyncio.gather(
        append(journal, rid), journal.append(rid, "test.cmd", b"retry")
    )
    assert first == AppendResult(b + 1, False, None)
    assert second == AppendResult(b + 1, True, response_for(rid))
    assert journal.last_seq == b + 1
    await journal.close()


async def test_the_idempotency_index_is_rebuilt_from_the_wal_on_open(settings: Settings) -> None:
    journal = await open_journal(settings)
    rids = [new_rid() for _ in range(100)]
    seqs = [(await append(journal, rid)).seq for rid in rids]
    await journal.close()
    journal = await open_journal(settings)
    assert len(journal.index) == 100
    last = journal.last_seq
    again = await asyncio.gather(*(append(journal, rid) for rid in rids))
    assert [(r.seq, r.duplicate, r.response) for r in again] == [
        (n, True, response_for(rid)) for n, rid in zip(seqs, rids, strict=True)
    ]
    assert journal.last_seq == last  # nothing written
    await journal.close()


async def test_a_lookup_of_an_in_flight_entry_waits_until_it_is_durable(
    settings: Settings,
) -> None:
    fs = FaultyFileLayer()
    journal = await open_journal(settings, fs)
    b = journal.last_seq
    held = HeldSync()
    fs.hook = held
    rid = new_rid()
    appending = asyncio.create_task(append(journal, rid))
    await held.wait_entered()
    looking = asyncio.create_task(journal.lookup(rid))
    await settle()
    assert not looking.done()  # not answered from memory before the fdatasync returned
    held.release.set()
    found = await looking
    assert found is not None
    assert found.seq == (await appending).seq == b + 1
    await journal.close()


async def test_append_batch_in_process_answers_each_entry_with_duplicates_inside(
    settings: Settings,
) -> None:
    journal = await open_journal(settings)
    base, batches = journal.last_seq, journal.stats.batches
    a, b = uuid.uuid4(), new_rid()

    def item(rid: uuid.UUID | bytes) -> dict[str, Any]:
        raw = rid.bytes if isinstance(rid, uuid.UUID) else rid
        return {"request_id": rid, "command_type": "t", "command": b"c", "response": raw}

    results = await journal.append_batch([item(a), item(b), item(a)])
    assert results == [
        AppendResult(base + 1, False, None),
        AppendResult(base + 2, False, None),
        AppendResult(base + 1, True, a.bytes),
    ]
    assert journal.stats.batches == batches + 1
    await journal.close()


async def test_an_in_process_subscriber_sees_history_then_live_without_gap_or_duplicate(
    settings: Settings,
) -> None:
    journal = await open_journal(settings)
    b = journal.last_seq
    history = [new_rid() for _ in range(500)]
    await asyncio.gather(*(append(journal, rid) for rid in history))
    live = [new_rid() for _ in range(1500)]

    async def writer() -> None:
        for i in range(0, len(live), 50):
            await asyncio.gather(*(append(journal, rid) for rid in live[i : i + 50]))

    task = asyncio.create_task(writer())
    seen = []
    stream: AsyncIterator[Any] = journal.subscribe(from_seq=1)
    async for entry in stream:
        seen.append(entry)
        if len(seen) == 2000:
            break
    await task
    assert [e.seq for e in seen] == list(range(b + 1, b + 2001))
    assert [e.request_id for e in seen] == history + live
    await journal.close()


async def test_appends_wait_while_the_queue_is_full_and_all_complete(settings: Settings) -> None:
    journal = await open_journal(settings.replace(queue_capacity=8, max_batch_entries=4))
    b = journal.last_seq
    rids = [new_rid() for _ in range(400)]
    with capture_logs() as logs:
        results = await asyncio.gather(*(append(journal, rid) for rid in rids))
    assert [r.seq for r in results] == list(range(b + 1, b + 401))
    assert journal.stats.backpressure_events > 0
    assert [e["event"] for e in logs].count("journal.backpressure") >= 1
    await journal.close()


async def test_close_commits_what_is_queued_and_refuses_later_appends(settings: Settings) -> None:
    journal = await open_journal(settings)
    b = journal.last_seq
    rids = [new_rid() for _ in range(300)]
    pending = [asyncio.create_task(append(journal, rid)) for rid in rids]
    await settle()
    await journal.close()
    assert [t.result().seq for t in pending] == list(range(b + 1, b + 301))
    with pytest.raises(ShuttingDownError):
        await append(journal, new_rid())
    reopened = await open_journal(settings)
    assert [e.request_id for e in reopened.read(1)] == rids
    await reopened.close()


# -- fail-stop ---------------------------------------------------------------------------------


async def test_a_failed_fdatasync_fails_every_pending_append_and_every_later_one_with_halted(
    settings: Settings,
) -> None:
    fs = FaultyFileLayer()
    journal = await open_journal(settings, fs)
    committed = [new_rid() for _ in range(10)]
    seqs = [(await append(journal, rid)).seq for rid in committed]
    last = journal.last_seq
    held = HeldSync()
    fs.hook = held
    fs.fail_next("fdatasync", errno.EIO)
    in_sync = new_rid()
    writing = asyncio.create_task(append(journal, in_sync))
    await held.wait_entered()
    queued = [asyncio.create_task(append(journal, new_rid())) for _ in range(20)]
    duplicate = asyncio.create_task(journal.append(in_sync, "test.cmd", b"retry"))
    waiting_lookup = asyncio.create_task(journal.lookup(in_sync))
    await settle()
    with capture_logs() as logs:
        held.release.set()
        outcomes = await asyncio.gather(
            writing, duplicate, waiting_lookup, *queued, return_exceptions=True
        )
        later = await asyncio.gather(
            *(append(journal, rid) for rid in [new_rid(), committed[0]]), return_exceptions=True
        )
    assert all(isinstance(o, HaltedError) for o in outcomes), outcomes  # never an ACK
    assert all(isinstance(o, HaltedError) for o in later), later
    # Reads and status keep working, and show only what was acknowledged.
    assert journal.last_seq == last
    assert [e.request_id for e in journal.read(1)] == committed
    found = await journal.lookup(committed[3])
    assert found is not None
    assert found.seq == seqs[3]
    status = journal.status()
    assert status["halted"] is True
    assert "write failed" in status["halt_reason"]
    assert status["last_seq"] == last
    assert status["queue_depth"] == 0
    halts = [e for e in logs if e["event"] == "journal.halted"]
    assert len(halts) == 1
    assert halts[0]["log_level"] == "critical"
    await journal.close()


async def test_a_failed_fdatasync_logs_exactly_one_critical_line(settings: Settings) -> None:
    fs = FaultyFileLayer()
    journal = await open_journal(settings, fs)
    fs.fail_next("fdatasync", errno.EIO)
    with capture_logs() as logs:
        with pytest.raises(HaltedError):
            await append(journal, new_rid())
        with pytest.raises(HaltedError):
            await append(journal, new_rid())
    critical = [e for e in logs if e["log_level"] == "critical"]
    assert len(critical) == 1, critical
    await journal.close()


async def test_a_failed_write_halts_the_journal_like_a_failed_fdatasync(
    settings: Settings,
) -> None:
    fs = FaultyFileLayer()
    journal = await open_journal(settings, fs)
    kept = await append(journal, new_rid())
    fs.fail_next("write", errno.ENOSPC)
    with pytest.raises(HaltedError, match="disk full"):
        await append(journal, new_rid())
    assert journal.status()["halted"] is True
    assert journal.last_seq == kept.seq
    await journal.close()


async def test_nothing_is_acknowledged_after_a_failed_fdatasync_even_if_the_bytes_were_written(
    settings: Settings,
) -> None:
    fs = FaultyFileLayer()
    journal = await open_journal(settings, fs)
    fs.fail_next("fdatasync", errno.EIO)
    lost = new_rid()
    with pytest.raises(HaltedError):
        await append(journal, lost)
    assert journal.read(1) == []
    assert await journal.lookup(lost) is None
    await journal.close()
    # After a restart the record may or may not be there (its bytes reached the page cache);
    # either way a retry with the same request id is answered once, with one record.
    reopened = await open_journal(settings)
    retry = await append(reopened, lost)
    assert [(e.seq, e.request_id) for e in reopened.read(1)] == [(retry.seq, lost)]
    await reopened.close()


async def test_a_slow_fdatasync_after_an_idle_period_does_not_halt_the_journal(
    settings: Settings,
) -> None:
    fs = FaultyFileLayer()
    threshold = 0.4
    journal = await open_journal(settings.replace(halt_threshold=threshold, queue_capacity=4), fs)
    b = (await append(journal, new_rid())).seq
    await asyncio.sleep(threshold * 2)  # idle: no batch for longer than the threshold
    held = HeldSync()
    fs.hook = held
    first = asyncio.create_task(append(journal, new_rid()))
    await held.wait_entered()
    burst = [asyncio.create_task(append(journal, new_rid())) for _ in range(10)]  # queue full
    await asyncio.sleep(threshold / 2)  # the write has been running for less than the threshold
    held.release.set()
    results = await asyncio.gather(first, *burst)
    assert sorted(r.seq for r in results) == list(range(b + 1, b + 12))
    assert journal.halted is None
    await journal.close()


async def test_a_write_stuck_longer_than_the_halt_threshold_with_a_full_queue_halts(
    settings: Settings,
) -> None:
    fs = FaultyFileLayer()
    journal = await open_journal(settings.replace(halt_threshold=0.2, queue_capacity=4), fs)
    held = HeldSync()
    fs.hook = held
    first = asyncio.create_task(append(journal, new_rid()))
    await held.wait_entered()
    burst = [asyncio.create_task(append(journal, new_rid())) for _ in range(10)]
    with capture_logs() as logs:
        while journal.halted is None:
            await asyncio.sleep(0.02)
    held.release.set()
    outcomes = await asyncio.gather(first, *burst, return_exceptions=True)
    assert all(isinstance(o, HaltedError) for o in outcomes), outcomes
    assert "writer stalled" in str(journal.halted)
    assert [e["event"] for e in logs if e["log_level"] == "critical"] == ["journal.halted"]
    await journal.close()


# -- the idempotency window --------------------------------------------------------------------


async def test_a_request_id_older_than_the_idempotency_window_counts_as_new(
    settings: Settings,
) -> None:
    journal = await open_journal(settings.replace(idempotency_window=0.3))
    old = new_rid()
    await append(journal, old)
    await asyncio.sleep(0.5)
    later = await append(journal, new_rid())  # a commit after the window evicts what fell out
    again = await append(journal, old)
    assert (again.seq, again.duplicate) == (later.seq + 1, False)
    await journal.close()


async def test_only_the_newest_max_entries_request_ids_are_remembered_across_a_restart(
    settings: Settings,
) -> None:
    small = settings.replace(idempotency_max_entries=10)
    journal = await open_journal(small)
    rids = [new_rid() for _ in range(25)]
    seqs = [(await append(journal, rid)).seq for rid in rids]
    assert len(journal.index) == 10
    await journal.close()
    journal = await open_journal(small)
    assert len(journal.index) == 10
    last = journal.last_seq
    remembered = await asyncio.gather(*(append(journal, rid) for rid in rids[-10:]))
    assert [(r.seq, r.duplicate) for r in remembered] == [(s, True) for s in seqs[-10:]]
    forgotten = await append(journal, rids[0])
    assert (forgotten.seq, forgotten.duplicate) == (last + 1, False)
    await journal.close()


async def test_a_failed_read_while_checking_a_batch_for_duplicates_leaves_no_entry_stuck(
    settings: Settings,
) -> None:
    fs = FaultyFileLayer()
    journal = await open_journal(settings, fs)
    old, new = new_rid(), new_rid()
    first = await append(journal, old)
    fs.fail_next("read", errno.EIO)  # reading the stored response of the duplicate fails
    batch = [
        {"request_id": new, "command_type": "t", "command": b"n"},
        {"request_id": old, "command_type": "t", "command": b"o"},
    ]
    with pytest.raises(OSError):
        await journal.append_batch(batch)
    # Nothing of the failed batch was queued, so nothing of it may wait in flight either.
    result = await asyncio.wait_for(append(journal, new), 5)
    assert (result.seq, result.duplicate) == (first.seq + 1, False)
    await journal.close()
