"""The journal's Linux AIO sync path (service/journal.py ``_start_aio_write``).

Real files, real kernel AIO. Its failures are injected where the file operation is, at
:class:`wal.aio.LinuxAio` (a sync that completes with EIO, an io_submit that is refused): the
only faults a disk-backed test cannot cause for real, and the lowest layer of this path.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from service.errors import HaltedError
from service.journal import Journal
from service.settings import Settings
from tests.service.harness import command_for, make_settings, new_rid
from wal.aio import LinuxAio

_probe = LinuxAio.open()
AIO_AVAILABLE = _probe is not None
if _probe is not None:
    _probe.close()
pytestmark = pytest.mark.skipif(not AIO_AVAILABLE, reason="no Linux AIO on this machine")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path / "data", str(tmp_path / "unused.sock"), segment_size=256 * 1024)


@pytest.fixture
async def journals() -> AsyncIterator[list[Journal]]:
    """Journals a test opened, closed at its end even if it failed (their writer threads
    would otherwise keep the test process alive)."""
    opened: list[Journal] = []
    yield opened
    for journal in opened:
        await journal.close()


async def open_journal(settings: Settings, journals: list[Journal]) -> Journal:
    journal = await Journal.open(settings)
    journals.append(journal)
    return journal


async def append(journal: Journal, rid: bytes) -> int:
    return (await journal.append(rid, "test.cmd", command_for(rid))).seq


async def append_many(journal: Journal, n: int) -> tuple[int, list[bytes]]:
    """``n`` appends at once; they get gap-free seqs after ``base``. Returns (base, ids)."""
    base = journal.last_seq
    rids = [new_rid() for _ in range(n)]
    seqs = await asyncio.gather(*(append(journal, rid) for rid in rids))
    assert seqs == list(range(base + 1, base + n + 1))
    return base, rids


async def assert_read_back_after_reopen(
    journal: Journal, settings: Settings, journals: list[Journal], base: int, rids: list[bytes]
) -> None:
    await journal.close()
    reopened = await open_journal(settings, journals)
    assert [e.request_id for e in reopened.read(base + 1, base + len(rids))] == rids


async def test_appends_are_synced_through_linux_aio_across_segment_rotations(
    settings: Settings, journals: list[Journal]
) -> None:
    journal = await open_journal(settings, journals)
    assert journal.sync_path == "linux-aio"
    base, rids = await append_many(journal, 3000)  # ~1 MiB of records: several new segments
    assert len(journal.wal.segments()) >= 3
    assert journal.sync_path == "linux-aio"  # rotations went through the writer thread
    await assert_read_back_after_reopen(journal, settings, journals, base, rids)


async def test_a_sync_that_completes_with_an_error_halts_and_nothing_is_acked_after(
    settings: Settings, journals: list[Journal], monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = await open_journal(settings, journals)
    acked = await append(journal, new_rid())
    reap = LinuxAio.reap

    def completes_with_eio(self: LinuxAio) -> list[int]:
        return [-errno.EIO for _ in reap(self)]

    monkeypatch.setattr(LinuxAio, "reap", completes_with_eio)
    results = await asyncio.gather(
        *(append(journal, new_rid()) for _ in range(20)), return_exceptions=True
    )
    assert all(isinstance(r, HaltedError) for r in results), results
    assert journal.halted is not None and "errno 5" in journal.halted
    with pytest.raises(HaltedError):
        await append(journal, new_rid())
    monkeypatch.undo()
    await journal.close()
    journal = await open_journal(settings, journals)  # recovery keeps the acknowledged entry
    assert journal.read(acked, acked)[0].seq == acked


async def test_a_refused_submit_moves_the_syncs_to_the_writer_thread_and_loses_nothing(
    settings: Settings, journals: list[Journal], monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = await open_journal(settings, journals)

    def refused(self: LinuxAio, fd: int, datasync: bool) -> None:
        raise OSError(errno.EAGAIN, "io_submit: Resource temporarily unavailable")

    monkeypatch.setattr(LinuxAio, "submit_sync", refused)
    base, rids = await append_many(journal, 200)
    assert journal.sync_path == "writer-thread"
    assert journal.halted is None
    await assert_read_back_after_reopen(journal, settings, journals, base, rids)


async def test_a_sync_that_never_completes_halts_after_the_threshold_and_close_returns(
    settings: Settings, journals: list[Journal], monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = await open_journal(settings.replace(halt_threshold=0.2, queue_capacity=4), journals)

    def never_completes(self: LinuxAio, fd: int, datasync: bool) -> None:
        self.in_flight += 1  # as if submitted to a disk that stopped answering

    monkeypatch.setattr(LinuxAio, "submit_sync", never_completes)
    pending = [asyncio.create_task(append(journal, new_rid())) for _ in range(10)]
    while journal.halted is None:
        await asyncio.sleep(0.02)
    outcomes = await asyncio.gather(*pending, return_exceptions=True)
    assert all(isinstance(o, HaltedError) for o in outcomes), outcomes
    assert "writer stalled" in journal.halted
    await asyncio.wait_for(journal.close(), 10)  # no io_destroy waiting on the lost sync
    assert journal.writer_stuck
