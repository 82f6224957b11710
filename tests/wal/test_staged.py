"""A batch appended in two steps (stage, the caller's own sync, complete): the same rules as
``Wal.append``. Real files and the real kernel; the failed sync is a real OSError handed in,
as the AIO completion would (service/journal.py)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from wal import Wal, WalOptions, WriterFailedError
from wal.faultfs import FaultyFileLayer

OPTIONS = WalOptions(segment_size=64 * 1024)


def test_a_staged_batch_is_invisible_until_completed_then_durable_and_readable(
    tmp_path: Path,
) -> None:
    with Wal.open(str(tmp_path), OPTIONS) as wal:
        before = wal.last_seq
        staged = wal.stage_append([b"one", b"two"])
        assert staged is not None
        assert staged.first == before + 1 and staged.datasync
        assert wal.last_seq == before and wal.get(before + 1) is None
        os.fdatasync(staged.fd)
        assert wal.complete_append(staged) == before + 1
        assert wal.last_seq == before + 2
        assert [r.payload for r in wal.read(before + 1)] == [b"one", b"two"]
        assert wal.append([b"three"]) == before + 3  # the usual path goes on from there
    with Wal.open(str(tmp_path), OPTIONS) as wal:
        assert [r.payload for r in wal.read(before + 1)] == [b"one", b"two", b"three"]


def test_a_batch_that_needs_a_new_segment_is_not_staged_and_nothing_is_written(
    tmp_path: Path,
) -> None:
    with Wal.open(str(tmp_path), OPTIONS) as wal:
        big = [os.urandom(1000) for _ in range(30)]
        while (staged := wal.stage_append(big)) is not None:
            os.fdatasync(staged.fd)
            wal.complete_append(staged)
        last, segments = wal.last_seq, len(wal.segments())
        assert wal.get(last + 1) is None
        assert wal.append(big) == last + 1  # append rotates
        assert len(wal.segments()) == segments + 1


def test_nothing_is_staged_on_a_fault_injecting_layer_or_without_syncs(tmp_path: Path) -> None:
    with Wal.open(str(tmp_path / "faulty"), OPTIONS, fs=FaultyFileLayer()) as wal:
        assert wal.stage_append([b"x"]) is None
    unsynced = WalOptions(segment_size=64 * 1024, sync_mode="none")
    with Wal.open(str(tmp_path / "none"), unsynced) as wal:
        assert wal.stage_append([b"x"]) is None
    with Wal.open(str(tmp_path / "fsync"), WalOptions(sync_mode="fsync")) as wal:
        staged = wal.stage_append([b"x"])
        assert staged is not None and not staged.datasync
        wal.complete_append(staged)


def test_a_failed_sync_fails_the_writer_for_good_and_keeps_what_was_acknowledged(
    tmp_path: Path,
) -> None:
    with Wal.open(str(tmp_path), OPTIONS) as wal:
        acked = wal.append([b"acked"])
        staged = wal.stage_append([b"never acknowledged"])
        assert staged is not None
        with pytest.raises(WriterFailedError, match=r"errno 5.*syncing a batch"):
            wal.complete_append(staged, OSError(errno.EIO, "Input/output error"))
        assert wal.failed is not None
        assert wal.last_seq == acked and wal.get(acked + 1) is None
        with pytest.raises(WriterFailedError):
            wal.stage_append([b"after"])
        with pytest.raises(WriterFailedError):
            wal.append([b"after"])
    with Wal.open(str(tmp_path), OPTIONS) as wal:
        rec = wal.get(acked)
        assert rec is not None and rec.payload == b"acked"
        assert wal.last_seq in (acked, acked + 1)  # the unacknowledged batch may survive


def test_a_staged_batch_must_be_completed_before_anything_else_is_written(tmp_path: Path) -> None:
    with Wal.open(str(tmp_path), OPTIONS) as wal:
        staged = wal.stage_append([b"a"])
        assert staged is not None
        with pytest.raises(RuntimeError, match="completed before"):
            wal.stage_append([b"b"])
        with pytest.raises(RuntimeError, match="completed before"):
            wal.append([b"b"])
        other = type(staged)(staged.fd, True, staged.first, 0, [1], 29)
        with pytest.raises(RuntimeError, match="not the batch"):
            wal.complete_append(other)
        wal.complete_append(staged)
        assert wal.append([b"b"]) == staged.first + 1


def test_a_staged_batch_can_be_synced_by_the_wal_itself_when_the_caller_cannot(
    tmp_path: Path,
) -> None:
    with Wal.open(str(tmp_path), OPTIONS) as wal:
        staged = wal.stage_append([b"synced by the wal"])
        assert staged is not None
        assert wal.sync_and_complete_append(staged) == staged.first
        assert wal.last_seq == staged.first
    with Wal.open(str(tmp_path), OPTIONS) as wal:
        rec = wal.get(staged.first)
        assert rec is not None and rec.payload == b"synced by the wal"
