"""Reading by seq through the sparse index, and the one-owner lock on a data directory."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.wal.surgery import (
    PLAIN,
    append_bytes,
    assert_intact_prefix,
    build_log,
    flip_bit,
    overwrite,
    payload_for,
    records_in,
    segment_paths,
    snapshot,
)
from wal import CorruptionError, LockedError, ReadOnlyError, SeqOutOfRangeError, Wal, WalOptions
from wal.format import encode_records

REPO = Path(__file__).resolve().parents[2]
# Many segments and an index mark every ~3 records, so reads start between marks and segments.
SMALL = WalOptions(preallocate=False, segment_size=400, index_interval=100)
BATCHES = [1, 4, 2, 7, 3, 1, 5, 2, 6, 1, 3, 4]
LAST = sum(BATCHES)


def _seqs_and_payloads(wal: Wal, from_seq: int, to_seq: int | None = None) -> list[int]:
    out = []
    for record in wal.read(from_seq, to_seq):
        assert record.payload == payload_for(record.seq)
        out.append(record.seq)
    return out


def _check_every_range(wal: Wal) -> None:
    for start in range(1, LAST + 2):
        assert _seqs_and_payloads(wal, start) == list(range(start, LAST + 1)), start
    for start, stop in [(1, 1), (3, 9), (10, 11), (LAST, LAST), (5, LAST + 10)]:
        assert _seqs_and_payloads(wal, start, stop) == list(range(start, min(stop, LAST) + 1))


def test_reads_from_any_seq_return_every_later_record_across_segments(tmp_path: Path) -> None:
    with Wal.open(str(tmp_path), SMALL) as wal:
        for n in BATCHES:
            wal.append([payload_for(s) for s in range(wal.last_seq + 1, wal.last_seq + 1 + n)])
        assert len(wal.segments()) > 3
        _check_every_range(wal)  # through the marks the writer added


def test_reads_after_reopen_use_the_index_built_by_the_scan(tmp_path: Path) -> None:
    build_log(tmp_path, BATCHES, SMALL)
    with Wal.open(str(tmp_path), SMALL, readonly=True) as wal:
        assert len(wal.segments()) > 3
        _check_every_range(wal)


def test_get_returns_the_record_with_that_seq_and_none_beyond_the_durable_end(
    tmp_path: Path,
) -> None:
    build_log(tmp_path, BATCHES, SMALL)
    with Wal.open(str(tmp_path), SMALL) as wal:
        for seq in range(1, LAST + 1):
            record = wal.get(seq)
            assert record is not None
            assert (record.seq, record.payload) == (seq, payload_for(seq))
        assert wal.get(LAST + 1) is None
        assert wal.get(0) is None


def test_an_empty_log_reads_nothing(tmp_path: Path) -> None:
    with Wal.open(str(tmp_path), PLAIN) as wal:
        assert (wal.first_seq, wal.last_seq, wal.chain_head) == (1, 0, 0)
        assert list(wal.read(1)) == []
        assert wal.get(1) is None


def test_reads_stop_at_the_last_synced_record_even_when_the_file_holds_more(
    tmp_path: Path,
) -> None:
    with Wal.open(str(tmp_path), PLAIN) as wal:
        wal.append([payload_for(1), payload_for(2)])
        # A batch being written but not yet synced: bytes in the file, not published to readers.
        buf, _ = encode_records([payload_for(3)], 3, wal.chain_head)
        append_bytes(segment_paths(tmp_path)[-1], bytes(buf))
        assert _seqs_and_payloads(wal, 1) == [1, 2]
        assert wal.get(3) is None
        assert wal.last_seq == 2


def test_reading_below_the_first_retained_segment_names_the_first_available_seq(
    tmp_path: Path,
) -> None:
    build_log(tmp_path, BATCHES, SMALL)
    first, second = segment_paths(tmp_path)[:2]
    first.unlink()
    first_available = records_in(second)[0].seq
    with Wal.open(str(tmp_path), SMALL) as wal:
        assert wal.first_seq == first_available
        with pytest.raises(SeqOutOfRangeError) as info:
            list(wal.read(1))
        assert (info.value.seq, info.value.first_available) == (1, first_available)
        assert f"first available seq is {first_available}" in str(info.value)
        with pytest.raises(SeqOutOfRangeError):
            wal.get(first_available - 1)
        assert _seqs_and_payloads(wal, first_available) == list(range(first_available, LAST + 1))


def test_every_record_read_is_checked_again_against_damage_made_after_open(
    tmp_path: Path,
) -> None:
    build_log(tmp_path, BATCHES, SMALL)
    with Wal.open(str(tmp_path), SMALL) as wal:
        target = records_in(segment_paths(tmp_path)[1])[1]
        flip_bit(target.path, (target.offset + 30) * 8)
        with pytest.raises(CorruptionError) as info:
            list(wal.read(1))
        assert (info.value.path, info.value.offset) == (str(target.path), target.offset)
        assert f"while reading seq {target.seq}" in info.value.reason


def test_a_reader_thread_sees_only_gap_free_intact_prefixes_while_the_writer_appends(
    tmp_path: Path,
) -> None:
    opts = WalOptions(preallocate=False, segment_size=2048, index_interval=256)
    seen: list[int] = []
    errors: list[BaseException] = []
    done = threading.Event()
    with Wal.open(str(tmp_path), opts) as wal:

        def reader() -> None:
            try:
                while not done.is_set():
                    last = wal.last_seq
                    start = max(1, last - 20)
                    seqs = _seqs_and_payloads(wal, start)
                    assert seqs == list(range(start, start + len(seqs)))
                    assert start + len(seqs) - 1 >= last
                    seen.append(len(seqs))
                    time.sleep(0.001)  # leave the GIL to the writer between reads
            except BaseException as exc:  # handed to the main thread
                errors.append(exc)

        thread = threading.Thread(target=reader)
        thread.start()
        try:
            for _ in range(150):
                first = wal.last_seq + 1
                wal.append([payload_for(s) for s in range(first, first + 3)])
        finally:
            done.set()
            thread.join()
        assert not errors, errors
        assert len(wal.segments()) > 5
        assert len(seen) > 1


def test_a_read_only_open_refuses_appends(tmp_path: Path) -> None:
    build_log(tmp_path, [1])
    with Wal.open(str(tmp_path), PLAIN, readonly=True) as wal, pytest.raises(ReadOnlyError):
        wal.append([b"x"])


# -- the lock ---------------------------------------------------------------------------------


@contextmanager
def _writer_in_another_process(directory: Path) -> Iterator[subprocess.Popen[str]]:
    code = textwrap.dedent(
        f"""
        import sys
        from wal import Wal, WalOptions
        import structlog
        structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
        wal = Wal.open({str(directory)!r}, WalOptions(preallocate=False))
        wal.append([b"from the child"])
        print("ready", flush=True)
        sys.stdin.read()
        wal.close()
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        yield proc
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        proc.wait(timeout=10)


def test_second_writable_open_fails_with_an_error_naming_the_holders_pid(tmp_path: Path) -> None:
    with _writer_in_another_process(tmp_path) as child:
        with pytest.raises(LockedError) as info:
            Wal.open(str(tmp_path), PLAIN)
        assert info.value.holder_pid == child.pid
        assert f"locked by pid {child.pid}" in str(info.value)
    with Wal.open(str(tmp_path), PLAIN) as wal:  # released when the holder closed
        assert wal.last_seq == 1


def test_second_writable_open_in_the_same_process_also_fails(tmp_path: Path) -> None:
    with Wal.open(str(tmp_path), PLAIN):
        with pytest.raises(LockedError) as info:
            Wal.open(str(tmp_path), PLAIN)
        assert info.value.holder_pid == os.getpid()


def test_the_lock_dies_with_its_holder(tmp_path: Path) -> None:
    with _writer_in_another_process(tmp_path) as child:
        child.kill()
        child.wait(timeout=10)
        with Wal.open(str(tmp_path), PLAIN) as wal:
            assert wal.last_seq == 1


def test_read_only_open_works_while_a_writer_holds_the_lock_and_leaves_a_torn_tail_alone(
    tmp_path: Path,
) -> None:
    with _writer_in_another_process(tmp_path):
        seg = segment_paths(tmp_path)[-1]
        append_bytes(seg, b"\x5a" * 21)  # as if a batch were being written right now
        before = snapshot(tmp_path)
        with Wal.open(str(tmp_path), PLAIN, readonly=True) as wal:
            torn = wal.recovery.torn_tail
            assert torn is not None and torn.dropped_bytes == 21
            assert wal.recovery.broken_copy is None
            assert [r.payload for r in wal.read(1)] == [b"from the child"]
        assert snapshot(tmp_path) == before


def test_records_read_back_are_the_ones_appended_after_a_clean_reopen(tmp_path: Path) -> None:
    build_log(tmp_path, BATCHES, SMALL)
    with Wal.open(str(tmp_path), SMALL) as wal:
        assert_intact_prefix([(r.seq, r.payload) for r in wal.read(1)], LAST)


def test_a_record_swapped_in_after_open_breaks_the_chain_the_reader_follows(
    tmp_path: Path,
) -> None:
    build_log(tmp_path, BATCHES, SMALL)
    with Wal.open(str(tmp_path), SMALL) as wal:
        segment = segment_paths(tmp_path)[1]
        first, target = records_in(segment)[:2]
        forged, _ = encode_records([payload_for(target.seq)], target.seq, 0x0BAD_CAFE)
        assert len(forged) == target.end - target.offset
        overwrite(segment, target.offset, bytes(forged))
        with pytest.raises(CorruptionError) as info:
            list(wal.read(first.seq))
        assert info.value.offset == target.offset
        assert f"chain break at seq {target.seq}" in info.value.reason


def test_records_larger_than_the_read_chunk_read_back_whole(tmp_path: Path) -> None:
    from wal import Wal, WalOptions
    from wal.reader import READ_CHUNK

    opts = WalOptions(segment_size=4 * READ_CHUNK, max_record_size=2 * READ_CHUNK)
    small, big = b"s" * 10, bytes(range(256)) * (READ_CHUNK // 256 + 7)
    with Wal.open(str(tmp_path), opts) as wal:
        wal.append([big, small, big])
        got = wal.get(1)
        assert got is not None and got.payload == big
        got = wal.get(3)
        assert got is not None and got.payload == big
        assert [r.payload for r in wal.read(1)] == [big, small, big]
