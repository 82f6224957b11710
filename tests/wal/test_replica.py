"""Copying a log verbatim (wal/replica.py): identical records, divergence named by seq."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from wal import RecordType, Wal, WalOptions, verify
from wal.format import RECORD_HEADER_SIZE, encode_records
from wal.replica import DivergenceError, split_batches

OPTS = WalOptions(segment_size=64 * 1024, max_record_size=8 * 1024, preallocate=False)


def fill(wal: Wal, batches: int) -> None:
    wal.append([b"run"], RecordType.RUN_STARTED)
    for i in range(batches):
        wal.append([os.urandom(1 + (i * 37) % 700) for _ in range(1 + i % 9)])


def copy(src: Wal, dst: Wal, from_seq: int = 1) -> None:
    for batch in split_batches(list(src.read_raw(from_seq))):
        dst.append_raw(batch)


def test_a_copy_is_record_for_record_identical_across_rotations(tmp_path: Path) -> None:
    with Wal.open(str(tmp_path / "p"), OPTS) as primary, Wal.open(str(tmp_path / "s"), OPTS) as s:
        fill(primary, 300)
        copy(primary, s)
        assert s.last_seq == primary.last_seq
        assert s.chain_head == primary.chain_head
        assert list(s.read_raw(1)) == list(primary.read_raw(1))
        assert len(s.segments()) > 3  # rotations happened on the copy too
        # more batches later: the copy continues from its own end
        fill(primary, 20)
        copy(primary, s, s.last_seq + 1)
        assert (s.last_seq, s.chain_head) == (primary.last_seq, primary.chain_head)
    report = verify(str(tmp_path / "s"))
    assert report.status == "clean"
    with Wal.open(str(tmp_path / "s"), OPTS) as reopened:
        assert reopened.chain_head == primary.chain_head


def test_a_primary_batch_may_be_split_but_two_batches_are_never_merged(tmp_path: Path) -> None:
    with Wal.open(str(tmp_path / "p"), OPTS) as primary, Wal.open(str(tmp_path / "s"), OPTS) as s:
        primary.append([b"a", b"b", b"c"])
        primary.append([b"d", b"e"])
        raw = list(primary.read_raw(1))
        assert [len(b) for b in split_batches(raw)] == [3, 2]
        s.append_raw(raw[:2])
        with pytest.raises(ValueError, match="starts another of the primary's batches"):
            s.append_raw(raw[2:4])
        assert s.last_seq == 2  # nothing written
        s.append_raw(raw[2:3])
        s.append_raw(raw[3:])
        assert s.chain_head == primary.chain_head


def test_divergence_is_named_by_the_first_seq_that_differs(tmp_path: Path) -> None:
    with Wal.open(str(tmp_path / "p"), OPTS) as primary, Wal.open(str(tmp_path / "s"), OPTS) as s:
        fill(primary, 10)
        raw = list(primary.read_raw(1))
        s.append_raw(raw[:1])
        batches = split_batches(raw[1:])
        s.append_raw(batches[0])
        nxt = s.last_seq + 1
        # a flipped payload byte: the record's own CRC fails
        bad = bytearray(batches[1][0])
        bad[RECORD_HEADER_SIZE] ^= 1
        with pytest.raises(DivergenceError, match=f"at seq {nxt}: .*checksum") as err:
            s.append_raw([bytes(bad)])
        assert err.value.seq == nxt
        # a gap: the next batch skipped
        with pytest.raises(DivergenceError, match=f"received seq {nxt + len(batches[1])}"):
            s.append_raw(batches[2])
        # a self-consistent record from another history: same seq, other chain
        forged, _ = encode_records([b"forged"], nxt, 0x1234)
        with pytest.raises(DivergenceError, match="chain break"):
            s.append_raw([bytes(forged)])
        assert s.last_seq == nxt - 1  # nothing of the refused records was written
        s.append_raw(batches[1])  # the real one still fits
        assert s.last_seq == nxt + len(batches[1]) - 1
