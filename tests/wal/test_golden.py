"""The golden files pin format version 1: same inputs, same bytes; old files stay readable.

If a test here fails, the on-disk format changed. Read tests/golden/make_golden.py before
touching the golden files.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from tests.golden.make_golden import GOLDEN_DIR, build_segments, golden_records
from wal import Wal, WalOptions, verify
from wal.format import FORMAT_VERSION, RECORD_HEADER, SEGMENT_HEADER_SIZE

# Pinned by hand, not computed: a change here is a change of the format.
GOLDEN_CHAIN_HEAD = 0x40E95936
GOLDEN_SEGMENTS = ("00000000000000000001.wal", "00000000000000000003.wal")


def _read_golden() -> dict[str, bytes]:
    return {name: Path(GOLDEN_DIR, name).read_bytes() for name in sorted(os.listdir(GOLDEN_DIR))}


def test_golden_directory_holds_exactly_the_known_segments() -> None:
    assert tuple(_read_golden()) == GOLDEN_SEGMENTS


def test_reencoding_the_golden_records_gives_byte_identical_files() -> None:
    files, head = build_segments()
    assert files == _read_golden()
    assert head == GOLDEN_CHAIN_HEAD


def test_golden_files_are_format_version_1() -> None:
    assert FORMAT_VERSION == 1
    for data in _read_golden().values():
        assert data[:8] == b"ACKWALSG"
        assert int.from_bytes(data[8:10], "little") == 1


def test_reading_the_golden_files_yields_the_known_records_and_chain_head() -> None:
    expected = golden_records()
    with Wal.open(GOLDEN_DIR, readonly=True) as wal:
        assert wal.recovery.torn_tail is None
        assert wal.first_seq == 1
        assert wal.last_seq == len(expected) == 5
        assert wal.chain_head == GOLDEN_CHAIN_HEAD
        got = list(wal.read(1))
        assert [(r.seq, r.type, r.payload) for r in got] == [tuple(e) for e in expected]
        assert all(wal.get(e.seq) == r for e, r in zip(expected, got, strict=True))
        assert [s.first_seq for s in wal.segments()] == [1, 3]


def test_golden_record_crcs_chain_across_the_segment_boundary() -> None:
    first, second = (_read_golden()[name] for name in GOLDEN_SEGMENTS)
    with Wal.open(GOLDEN_DIR, readonly=True) as wal:
        crcs = [r.crc for r in wal.read(1)]
    prev_chain = int.from_bytes(second[24:28], "little")
    assert prev_chain == crcs[1]  # segment 2 carries the crc of seq 2, the last of segment 1
    first_of_second = RECORD_HEADER.unpack_from(second, SEGMENT_HEADER_SIZE)
    assert first_of_second[1] == crcs[1]  # and its first record links to it as prev_crc
    assert int.from_bytes(first[SEGMENT_HEADER_SIZE + 4 : SEGMENT_HEADER_SIZE + 8], "little") == 0


def test_verify_reports_the_golden_log_clean() -> None:
    report = verify(GOLDEN_DIR)
    assert report.status == "clean"
    assert (report.segments, report.record_count, report.first_seq, report.last_seq) == (2, 5, 1, 5)
    assert report.chain_head == GOLDEN_CHAIN_HEAD
    assert report.valid_bytes == sum(len(d) for d in _read_golden().values())


def test_appending_to_a_copy_of_the_golden_log_continues_seq_and_chain(tmp_path: Path) -> None:
    directory = tmp_path / "wal"
    shutil.copytree(GOLDEN_DIR, directory)
    opts = WalOptions(preallocate=False)
    with Wal.open(str(directory), opts) as wal:
        assert wal.append([b"next"]) == 6
        head = wal.chain_head
    with Wal.open(str(directory), opts, readonly=True) as wal:
        records = list(wal.read(5))
        assert [r.seq for r in records] == [5, 6]
        assert records[0].crc == GOLDEN_CHAIN_HEAD
        assert wal.chain_head == head != GOLDEN_CHAIN_HEAD
    data = (directory / GOLDEN_SEGMENTS[-1]).read_bytes()
    assert RECORD_HEADER.unpack_from(data, len(_read_golden()[GOLDEN_SEGMENTS[-1]]))[1] == (
        GOLDEN_CHAIN_HEAD
    )
