"""Recovery's rules, proved by byte surgery on real log files.

A torn tail (the unsynced end of the last segment) is cut off, copied aside to ``*.broken`` and
the log opens; anything else that is damaged makes the open fail with a CorruptionError that
names the file and the offset. Every test name states one rule.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.wal.surgery import (
    PLAIN,
    Placed,
    all_records,
    append_bytes,
    assert_intact_prefix,
    build_log,
    flip_bit,
    overwrite,
    payload_for,
    read_all,
    records_in,
    segment_paths,
    snapshot,
    truncate,
    zero_range,
)
from wal import CorruptionError, Wal, WalOptions, verify
from wal.crc import crc32c
from wal.format import SEGMENT_HEADER_SIZE, encode_records, encode_segment_header

# Small segments so that a handful of batches spans several files.
ROTATING = WalOptions(preallocate=False, segment_size=256)


def _broken_files(directory: Path) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.endswith(".broken"))


def _open_fails(directory: Path, options: WalOptions = PLAIN) -> CorruptionError:
    with pytest.raises(CorruptionError) as info:
        Wal.open(str(directory), options)
    return info.value


# -- torn tails -------------------------------------------------------------------------------


@pytest.mark.parametrize("batches", [[3, 1, 2], [3, 2, 1]], ids=["same-batch", "two-batches"])
def test_log_truncated_at_any_offset_of_its_last_two_records_keeps_every_earlier_record(
    tmp_path: Path, batches: list[int]
) -> None:
    src = tmp_path / "src"
    build_log(src, batches)
    records = all_records(src)
    seg = records[-1].path
    original = seg.read_bytes()
    boundaries = {r.end: r.seq for r in records}
    work = tmp_path / "work"
    for cut in range(records[-2].offset, records[-1].end + 1):
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(src, work)
        truncate(work / seg.name, cut)
        whole = [r for r in records if r.end <= cut]
        kept = whole[-1].end
        partial = original[kept:cut]
        with Wal.open(str(work), PLAIN) as wal:
            assert wal.last_seq == len(whole), cut
            assert_intact_prefix([(r.seq, r.payload) for r in wal.read(1)], len(whole))
            torn = wal.recovery.torn_tail
            if cut in boundaries or not partial.strip(b"\0"):
                assert torn is None, cut
            else:
                assert torn is not None, cut
                assert (torn.path, torn.offset) == (str(work / seg.name), kept)
                assert (work / seg.name).stat().st_size == kept
                assert wal.recovery.dropped_bytes == len(partial.rstrip(b"\0"))
            assert wal.append([payload_for(len(whole) + 1)]) == len(whole) + 1
        assert_intact_prefix(read_all(work), len(whole) + 1)


def test_truncated_trailing_record_is_cut_and_copied_to_a_broken_file(tmp_path: Path) -> None:
    build_log(tmp_path, [2, 2])
    last = all_records(tmp_path)[-1]
    original = last.path.read_bytes()
    truncate(last.path, last.end - 3)
    with Wal.open(str(tmp_path), PLAIN) as wal:
        report = wal.recovery
        assert wal.last_seq == 3
    assert report.torn_tail is not None
    assert "runs past the end" in report.torn_tail.reason
    assert report.broken_copy == f"{last.path}.{last.offset}.broken"
    assert Path(report.broken_copy).read_bytes() == original[last.offset : last.end - 3]
    assert last.path.stat().st_size == last.offset
    assert _broken_files(tmp_path) == [f"{last.path.name}.{last.offset}.broken"]


def test_garbage_tail_is_cut_and_its_bytes_are_kept_in_the_broken_file(tmp_path: Path) -> None:
    build_log(tmp_path, [3, 1])
    seg = segment_paths(tmp_path)[-1]
    size = seg.stat().st_size
    garbage = bytes(range(1, 200)) * 3
    append_bytes(seg, garbage)
    with Wal.open(str(tmp_path), PLAIN) as wal:
        report = wal.recovery
        assert_intact_prefix([(r.seq, r.payload) for r in wal.read(1)], 4)
    assert report.torn_tail is not None
    assert report.torn_tail.offset == size
    assert report.dropped_bytes == len(garbage)
    assert report.broken_copy is not None
    assert Path(report.broken_copy).read_bytes() == garbage
    assert seg.stat().st_size == size


def test_zero_filled_tail_without_preallocation_holds_no_record_and_is_overwritten(
    tmp_path: Path,
) -> None:
    build_log(tmp_path, [2, 3])
    seg = segment_paths(tmp_path)[-1]
    append_bytes(seg, bytes(4096))
    with Wal.open(str(tmp_path), PLAIN) as wal:
        assert wal.recovery.torn_tail is None
        assert wal.last_seq == 5
        wal.append([payload_for(6), payload_for(7)])
    assert verify(str(tmp_path)).status == "clean"
    assert_intact_prefix(read_all(tmp_path), 7)
    assert _broken_files(tmp_path) == []


def test_zero_filled_preallocated_segment_reopens_clean_and_keeps_appending(
    tmp_path: Path,
) -> None:
    opts = WalOptions(preallocate=True, segment_size=64 * 1024)
    build_log(tmp_path, [2, 5, 1], opts)
    seg = segment_paths(tmp_path)[-1]
    assert seg.stat().st_size == 64 * 1024  # zero-filled up to the segment size
    with Wal.open(str(tmp_path), opts) as wal:
        assert wal.recovery.torn_tail is None
        assert wal.last_seq == 8
        wal.append([payload_for(9)])
    assert_intact_prefix(read_all(tmp_path, opts), 9)
    assert verify(str(tmp_path)).status == "clean"


def test_last_batch_that_reads_back_as_zeros_in_preallocated_space_is_not_a_record(
    tmp_path: Path,
) -> None:
    opts = WalOptions(preallocate=True, segment_size=64 * 1024)
    build_log(tmp_path, [2, 3], opts)
    records = all_records(tmp_path)
    zero_range(records[2].path, records[2].offset, records[-1].end)  # its pages never landed
    with Wal.open(str(tmp_path), opts) as wal:
        assert wal.recovery.torn_tail is None
        assert wal.last_seq == 2
        assert wal.append([payload_for(3)]) == 3
    assert_intact_prefix(read_all(tmp_path, opts), 3)


def test_torn_batch_whose_later_records_of_the_same_batch_survived_is_a_torn_tail(
    tmp_path: Path,
) -> None:
    build_log(tmp_path, [2, 4])
    records = all_records(tmp_path)
    torn_first = records[2]
    assert torn_first.batch_first == 3 and records[-1].batch_first == 3
    original = torn_first.path.read_bytes()
    zero_range(torn_first.path, torn_first.offset, torn_first.end)  # its first page was lost
    with Wal.open(str(tmp_path), PLAIN) as wal:
        report = wal.recovery
        assert wal.last_seq == 2
    assert report.torn_tail is not None
    assert report.torn_tail.offset == torn_first.offset
    assert "record type 0" in report.torn_tail.reason
    assert report.broken_copy is not None
    assert Path(report.broken_copy).read_bytes() == (
        bytes(torn_first.end - torn_first.offset) + original[torn_first.end :]
    )
    assert_intact_prefix(read_all(tmp_path), 2)


def test_damaged_record_of_the_last_batch_drops_the_rest_of_that_batch_only(
    tmp_path: Path,
) -> None:
    build_log(tmp_path, [3, 4])
    rec = all_records(tmp_path)[5]  # seq 6, the third record of the last batch
    flip_bit(rec.path, rec.offset * 8 + 8 * 30)
    with Wal.open(str(tmp_path), PLAIN) as wal:
        assert wal.recovery.torn_tail is not None
        assert wal.recovery.torn_tail.reason == "record checksum mismatch"
        assert wal.last_seq == 5
    assert_intact_prefix(read_all(tmp_path), 5)


# -- corruption inside the last segment -------------------------------------------------------


def test_bad_record_followed_by_a_record_of_a_later_batch_is_corruption(tmp_path: Path) -> None:
    build_log(tmp_path, [2, 2, 1])
    bad = all_records(tmp_path)[3]  # seq 4: last record of the second batch; batch 3 follows
    flip_bit(bad.path, (bad.end - 1) * 8)
    before = snapshot(tmp_path)
    err = _open_fails(tmp_path)
    assert (err.path, err.offset) == (str(bad.path), bad.offset)
    assert "record checksum mismatch" in err.reason
    assert "later write batch (seq 5" in err.reason
    assert str(bad.path) in str(err) and f"offset {bad.offset}" in str(err)
    after = snapshot(tmp_path)
    after.pop("LOCK")
    before.pop("LOCK", None)
    assert after == before  # a refused open repairs nothing


def test_zeroed_record_followed_by_a_later_batch_is_corruption_not_a_torn_tail(
    tmp_path: Path,
) -> None:
    build_log(tmp_path, [1, 1, 1])
    bad = all_records(tmp_path)[1]
    zero_range(bad.path, bad.offset, bad.end)
    err = _open_fails(tmp_path)
    assert (err.path, err.offset) == (str(bad.path), bad.offset)
    assert "record type 0" in err.reason


def test_damaged_length_field_followed_by_a_later_batch_is_corruption(tmp_path: Path) -> None:
    build_log(tmp_path, [3, 3])
    bad = all_records(tmp_path)[1]
    overwrite(bad.path, bad.offset + 8, (0xFFFF).to_bytes(4, "little"))
    err = _open_fails(tmp_path)
    assert (err.path, err.offset) == (str(bad.path), bad.offset)


def test_records_spliced_out_of_the_middle_of_a_segment_is_corruption(tmp_path: Path) -> None:
    build_log(tmp_path, [2, 2, 2])
    records = all_records(tmp_path)
    seg = records[0].path
    data = seg.read_bytes()
    seg.write_bytes(data[: records[2].offset] + data[records[4].offset :])
    err = _open_fails(tmp_path)
    assert err.offset == records[2].offset
    assert "seq 5 where 3 was expected" in err.reason


def test_every_single_bit_flip_is_either_a_torn_tail_or_corruption(tmp_path: Path) -> None:
    """Each flip of a two-segment log: flips in the last batch are torn tails, others corruption.

    No flipped record is ever returned by a read after the reopen.
    """
    src = tmp_path / "src"
    build_log(src, [2, 1, 3, 2], ROTATING)
    paths = segment_paths(src)
    assert len(paths) == 2
    originals = {p.name: p.read_bytes() for p in paths}
    records = all_records(src)
    last_batch = records[-1].batch_first
    by_byte: dict[tuple[str, int], Placed] = {
        (r.path.name, b): r for r in records for b in range(r.offset, r.end)
    }
    work = tmp_path / "work"
    shutil.copytree(src, work)
    counts = {"torn": 0, "corrupt": 0}
    for name, data in originals.items():
        for bit in range(len(data) * 8):
            for leftover in _broken_files(work):
                (work / leftover).unlink()
            for other, content in originals.items():
                if (work / other).read_bytes() != content:
                    (work / other).write_bytes(content)
            flip_bit(work / name, bit)
            rec = by_byte.get((name, bit // 8))
            status = verify(str(work)).status
            if rec is not None and rec.path == paths[-1] and rec.batch_first == last_batch:
                assert status == "torn_tail", (name, bit)
                with Wal.open(str(work), ROTATING) as wal:
                    torn = wal.recovery.torn_tail
                    assert torn is not None and torn.offset == rec.offset, (name, bit)
                    got = [(r.seq, r.payload) for r in wal.read(1)]
                assert_intact_prefix(got, rec.seq - 1)
                counts["torn"] += 1
            else:
                assert status == "corrupt", (name, bit)
                err = _open_fails(work, ROTATING)
                assert err.path == str(work / name), (name, bit)
                assert err.offset == (0 if rec is None else rec.offset), (name, bit)
                counts["corrupt"] += 1
    total_bits = sum(len(d) for d in originals.values()) * 8
    assert counts["torn"] + counts["corrupt"] == total_bits
    assert counts["torn"] == sum(r.end - r.offset for r in records[-2:]) * 8


# -- segments ---------------------------------------------------------------------------------


def _four_segments(directory: Path) -> list[Path]:
    build_log(directory, [3, 3, 3, 3, 3, 3, 3], ROTATING)
    paths = segment_paths(directory)
    assert len(paths) >= 4
    return paths


def test_missing_middle_segment_is_corruption(tmp_path: Path) -> None:
    paths = _four_segments(tmp_path)
    paths[1].unlink()
    err = _open_fails(tmp_path, ROTATING)
    assert (err.path, err.offset) == (str(paths[2]), 0)
    assert "sequence gap" in err.reason


def test_swapped_middle_segments_are_corruption(tmp_path: Path) -> None:
    paths = _four_segments(tmp_path)
    a, b = paths[1].read_bytes(), paths[2].read_bytes()
    paths[1].write_bytes(b)
    paths[2].write_bytes(a)
    err = _open_fails(tmp_path, ROTATING)
    assert (err.path, err.offset) == (str(paths[1]), 0)
    assert "renamed or swapped segment" in err.reason


def test_duplicated_middle_segment_is_corruption(tmp_path: Path) -> None:
    paths = _four_segments(tmp_path)
    shutil.copyfile(paths[1], paths[2])
    err = _open_fails(tmp_path, ROTATING)
    assert (err.path, err.offset) == (str(paths[2]), 0)


def _last_crc(path: Path) -> int:
    last = records_in(path)[-1]
    return int.from_bytes(path.read_bytes()[last.offset : last.offset + 4], "little")


def test_duplicated_segment_with_a_forged_header_is_corruption_at_its_first_record(
    tmp_path: Path,
) -> None:
    paths = _four_segments(tmp_path)
    third_first = records_in(paths[2])[0].seq
    forged = encode_segment_header(third_first, _last_crc(paths[1]), 0)
    paths[2].write_bytes(forged + paths[1].read_bytes()[SEGMENT_HEADER_SIZE:])
    err = _open_fails(tmp_path, ROTATING)
    assert (err.path, err.offset) == (str(paths[2]), SEGMENT_HEADER_SIZE)
    assert f"where {third_first} was expected" in err.reason


def _other_log(directory: Path) -> list[Path]:
    """A log with the same batch shape (same seqs, same segment names), other payloads."""
    with Wal.open(str(directory), ROTATING) as wal:
        for n in [3, 3, 3, 3, 3, 3, 3]:
            wal.append([b"other log %d" % i for i in range(n)])
    return segment_paths(directory)


def test_segment_from_another_log_with_the_same_seqs_breaks_the_chain(tmp_path: Path) -> None:
    ours = _four_segments(tmp_path / "ours")
    theirs = _other_log(tmp_path / "theirs")
    assert [p.name for p in theirs] == [p.name for p in ours]
    shutil.copyfile(theirs[2], ours[2])
    err = _open_fails(tmp_path / "ours", ROTATING)
    assert (err.path, err.offset) == (str(ours[2]), 0)
    assert "chain break" in err.reason


def test_foreign_segment_with_a_forged_chain_value_breaks_at_its_first_record(
    tmp_path: Path,
) -> None:
    ours = _four_segments(tmp_path / "ours")
    theirs = _other_log(tmp_path / "theirs")
    first = records_in(theirs[2])[0].seq
    forged = encode_segment_header(first, _last_crc(ours[1]), 0)
    ours[2].write_bytes(forged + theirs[2].read_bytes()[SEGMENT_HEADER_SIZE:])
    err = _open_fails(tmp_path / "ours", ROTATING)
    assert (err.path, err.offset) == (str(ours[2]), SEGMENT_HEADER_SIZE)
    assert f"chain break at seq {first}" in err.reason


def test_losing_the_whole_last_segment_is_only_visible_through_the_chain_head(
    tmp_path: Path,
) -> None:
    paths = _four_segments(tmp_path)
    with Wal.open(str(tmp_path), ROTATING, readonly=True) as wal:
        head, last = wal.chain_head, wal.last_seq
    paths[-1].unlink()
    with Wal.open(str(tmp_path), ROTATING) as wal:
        assert wal.recovery.torn_tail is None
        assert wal.last_seq < last
        assert wal.chain_head != head  # a standby comparing chain heads sees the difference


@pytest.mark.parametrize("which", [0, -1])
def test_bad_segment_header_is_corruption_even_in_the_last_segment(
    tmp_path: Path, which: int
) -> None:
    paths = _four_segments(tmp_path)
    flip_bit(paths[which], 17 * 8)  # inside first_seq
    err = _open_fails(tmp_path, ROTATING)
    assert (err.path, err.offset) == (str(paths[which]), 0)
    assert "bad segment header: segment header checksum mismatch" in err.reason


def test_segment_shorter_than_its_header_is_corruption(tmp_path: Path) -> None:
    paths = _four_segments(tmp_path)
    truncate(paths[-1], 20)
    err = _open_fails(tmp_path, ROTATING)
    assert (err.path, err.offset) == (str(paths[-1]), 0)
    assert "segment header truncated: 20 of 48 bytes" in err.reason


def test_segment_of_a_newer_format_version_is_refused(tmp_path: Path) -> None:
    paths = _four_segments(tmp_path)
    header = bytearray(paths[-1].read_bytes()[:SEGMENT_HEADER_SIZE])
    header[8] = 2
    header[44:48] = crc32c(bytes(header[:44])).to_bytes(4, "little")
    overwrite(paths[-1], 0, bytes(header))
    err = _open_fails(tmp_path, ROTATING)
    assert "unsupported format version 2" in err.reason


def test_truncated_record_in_a_non_last_segment_is_corruption(tmp_path: Path) -> None:
    paths = _four_segments(tmp_path)
    last = records_in(paths[1])[-1]
    truncate(paths[1], last.end - 1)
    err = _open_fails(tmp_path, ROTATING)
    assert (err.path, err.offset) == (str(paths[1]), last.offset)
    assert "not in the last segment" in err.reason


def test_garbage_after_the_records_of_a_non_last_segment_is_corruption(tmp_path: Path) -> None:
    paths = _four_segments(tmp_path)
    end = paths[0].stat().st_size
    append_bytes(paths[0], b"\x07" * 40)
    err = _open_fails(tmp_path, ROTATING)
    assert (err.path, err.offset) == (str(paths[0]), end)


def test_zeros_after_the_records_of_a_non_last_segment_are_unused_preallocated_space(
    tmp_path: Path,
) -> None:
    paths = _four_segments(tmp_path)
    last = read_all(tmp_path, ROTATING)[-1][0]
    append_bytes(paths[0], bytes(1000))
    assert_intact_prefix(read_all(tmp_path, ROTATING), last)


def test_flipped_record_in_a_non_last_segment_is_corruption(tmp_path: Path) -> None:
    paths = _four_segments(tmp_path)
    rec = records_in(paths[2])[-1]  # the last record of its segment: nothing valid follows it
    flip_bit(paths[2], (rec.offset + 30) * 8)
    err = _open_fails(tmp_path, ROTATING)
    assert (err.path, err.offset) == (str(paths[2]), rec.offset)


# -- verify -----------------------------------------------------------------------------------


def test_verify_reports_a_clean_log_clean_and_changes_nothing(tmp_path: Path) -> None:
    last = build_log(tmp_path, [2, 3, 4], ROTATING)
    before = snapshot(tmp_path)
    report = verify(str(tmp_path))
    assert snapshot(tmp_path) == before
    assert report.status == "clean"
    assert (report.first_seq, report.last_seq, report.record_count) == (1, last, last)
    assert report.segments == len(segment_paths(tmp_path))
    assert report.problems == ()
    with Wal.open(str(tmp_path), ROTATING, readonly=True) as wal:
        assert report.chain_head == wal.chain_head


def test_verify_reports_a_torn_tail_and_leaves_it_in_place(tmp_path: Path) -> None:
    build_log(tmp_path, [2, 3])
    seg = segment_paths(tmp_path)[-1]
    append_bytes(seg, b"\xaa" * 33)
    before = snapshot(tmp_path)
    report = verify(str(tmp_path))
    assert snapshot(tmp_path) == before
    assert report.status == "torn_tail"
    assert report.last_seq == 5
    (problem,) = report.problems
    assert (problem.kind, problem.path, problem.dropped_bytes) == ("torn_tail", str(seg), 33)


def test_verify_reports_corruption_and_lists_every_damaged_spot(tmp_path: Path) -> None:
    paths = _four_segments(tmp_path)
    flip_bit(paths[0], 10 * 8)  # segment header
    rec = records_in(paths[2])[0]
    flip_bit(paths[2], (rec.offset + 29) * 8)
    before = snapshot(tmp_path)
    report = verify(str(tmp_path))
    assert snapshot(tmp_path) == before
    assert report.status == "corrupt"
    assert [(p.kind, p.path, p.offset) for p in report.problems] == [
        ("corruption", str(paths[0]), 0),
        ("corruption", str(paths[2]), rec.offset),
    ]
    assert all(str(p).startswith("corruption in ") for p in report.problems)


def test_verify_of_an_empty_directory_is_clean(tmp_path: Path) -> None:
    report = verify(str(tmp_path))
    assert report.status == "clean"
    assert (report.segments, report.record_count, report.first_seq, report.last_seq) == (
        0,
        0,
        None,
        0,
    )


# -- temp files -------------------------------------------------------------------------------


def test_stale_temp_files_are_removed_at_a_writable_open(tmp_path: Path) -> None:
    build_log(tmp_path, [2])
    stale = ["00000000000000000003.wal.tmp", "spare.wal.tmp"]
    for name in stale:
        (tmp_path / name).write_bytes(encode_segment_header(3, 0, 0) + bytes(100))
    with Wal.open(str(tmp_path), PLAIN, readonly=True) as wal:
        assert wal.recovery.removed_temp_files == ()
    assert all((tmp_path / name).exists() for name in stale)
    with Wal.open(str(tmp_path), PLAIN) as wal:
        assert sorted(wal.recovery.removed_temp_files) == sorted(stale)
        assert wal.last_seq == 2
    assert not any(name.endswith(".tmp") for name in os.listdir(tmp_path))


def test_a_stale_temp_segment_is_never_read_as_part_of_the_log(tmp_path: Path) -> None:
    build_log(tmp_path, [2])
    buf, _ = encode_records([b"never committed"], 3, 0)
    (tmp_path / "00000000000000000003.wal.tmp").write_bytes(
        encode_segment_header(3, 0, 0) + bytes(buf)
    )
    assert verify(str(tmp_path)).last_seq == 2
    assert_intact_prefix(read_all(tmp_path), 2)


# -- settings ---------------------------------------------------------------------------------


def test_lowering_max_record_size_refuses_to_open_rather_than_cutting_intact_records(
    tmp_path: Path,
) -> None:
    with Wal.open(str(tmp_path), PLAIN) as wal:
        wal.append([payload_for(1)])
        wal.append([payload_for(2, size=1000)])
    before = snapshot(tmp_path)
    smaller = WalOptions(preallocate=False, max_record_size=100)
    err = _open_fails(tmp_path, smaller)
    assert "exceeds the maximum 100" in err.reason
    assert "max_record_size it was written with" in err.reason
    assert {n: v for n, v in snapshot(tmp_path).items() if n != "LOCK"} == {
        n: v for n, v in before.items() if n != "LOCK"
    }
    with Wal.open(str(tmp_path), PLAIN) as wal:
        assert wal.last_seq == 2


def test_a_second_tear_at_the_same_offset_keeps_both_broken_copies(tmp_path: Path) -> None:
    opts = WalOptions(segment_size=64 * 1024, preallocate=False)
    with Wal.open(str(tmp_path), opts) as wal:
        wal.append([b"a" * 10])
        seg = wal.segments()[-1]
    for garbage in (b"\x01first-tear", b"\x02second-tear"):
        with open(seg.path, "r+b") as f:
            f.seek(seg.bytes)
            f.write(garbage)
        with Wal.open(str(tmp_path), opts) as wal:
            assert wal.recovery.broken_copy is not None
    copies = [p for p in tmp_path.iterdir() if p.name.endswith(".broken")]
    assert sorted(p.read_bytes() for p in copies) == [b"\x01first-tear", b"\x02second-tear"]
