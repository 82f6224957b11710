"""Read-only scan of a log directory: validate every segment, record and chain link.

The scan decides, for each damaged spot, whether it is a *torn tail* or *corruption*:

* Damage in any segment but the last is corruption: a segment is only ever left behind after its
  last batch was synced and the next segment's creation was made durable.
* Damage in the last segment is a torn tail unless a valid record *from a later write batch*
  follows it. Every record carries its position in its batch, so ``seq - batch_pos`` is the first
  seq of the batch that wrote it. A batch is written with one write and one fdatasync, and the next
  batch starts only after that fdatasync returned; so a valid record of a later batch proves that
  the damaged one had been synced, i.e. acknowledged data was damaged. Valid records of the *same*
  batch after a damaged one are expected after a power cut (pages reach the disk in any order)
  and are dropped with the torn tail: that batch was never acknowledged.

Nothing here writes; :mod:`wal.recovery` applies the repair.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal

from wal.fileio import OS_FILES, FileLayer
from wal.format import (
    DEFAULT_MAX_RECORD_SIZE,
    MAX_LENGTH_FIELD,
    PLAUSIBLE_SEQ_WINDOW,
    RECORD_HEADER,
    RECORD_HEADER_SIZE,
    SEGMENT_HEADER_SIZE,
    RecordView,
    check_record,
    decode_segment_header,
    parse_segment_name,
)

DEFAULT_INDEX_INTERVAL = 16 * 1024


@dataclass(frozen=True, slots=True)
class Problem:
    """A damaged spot in the log."""

    kind: Literal["torn_tail", "corruption"]
    path: str
    offset: int
    reason: str
    dropped_bytes: int = 0  # torn tails: damaged bytes from ``offset`` to the last non-zero byte

    def __str__(self) -> str:
        what = "torn tail" if self.kind == "torn_tail" else "corruption"
        extra = f" ({self.dropped_bytes} bytes)" if self.kind == "torn_tail" else ""
        return f"{what} in {self.path} at offset {self.offset}: {self.reason}{extra}"


@dataclass(slots=True)
class SegmentScan:
    """What the scan learned about one segment; also the reader's index of it."""

    path: str
    first_seq: int
    prev_chain: int
    created_unix_ns: int
    file_size: int
    valid_end: int
    last_seq: int
    last_crc: int
    record_count: int
    marks_seq: list[int] = field(default_factory=list)
    marks_off: list[int] = field(default_factory=list)

    @property
    def name(self) -> str:
        return os.path.basename(self.path)


@dataclass(slots=True)
class ScanResult:
    directory: str
    segments: list[SegmentScan]
    problems: list[Problem]

    @property
    def corruption(self) -> list[Problem]:
        return [p for p in self.problems if p.kind == "corruption"]

    @property
    def torn_tail(self) -> Problem | None:
        return next((p for p in self.problems if p.kind == "torn_tail"), None)

    @property
    def first_seq(self) -> int | None:
        return self.segments[0].first_seq if self.segments else None

    @property
    def last_seq(self) -> int:
        return self.segments[-1].last_seq if self.segments else 0

    @property
    def chain_head(self) -> int:
        return self.segments[-1].last_crc if self.segments else 0

    @property
    def record_count(self) -> int:
        return sum(s.record_count for s in self.segments)

    @property
    def valid_bytes(self) -> int:
        return sum(s.valid_end for s in self.segments)


def list_segments(directory: str, fs: FileLayer = OS_FILES) -> list[tuple[int, str]]:
    """(first_seq, file name) of every segment file in ``directory``, in seq order."""
    found = []
    for name in fs.listdir(directory):
        first = parse_segment_name(name)
        if first is not None:
            found.append((first, name))
    found.sort()
    return found


def scan_log(
    directory: str,
    fs: FileLayer = OS_FILES,
    *,
    max_record_size: int = DEFAULT_MAX_RECORD_SIZE,
    index_interval: int = DEFAULT_INDEX_INTERVAL,
    keep_going: bool = False,
) -> ScanResult:
    """Validate the whole log. Stops at the first corruption unless ``keep_going``."""
    result = ScanResult(directory, [], [])
    names = list_segments(directory, fs)
    prev: SegmentScan | None = None
    for i, (name_seq, name) in enumerate(names):
        path = os.path.join(directory, name)
        is_last = i == len(names) - 1
        data = fs.read_file(path)
        try:
            header = decode_segment_header(data)
        except ValueError as exc:
            result.problems.append(Problem("corruption", path, 0, f"bad segment header: {exc}"))
            if not keep_going:
                return result
            prev = None
            continue
        link_error = None
        if header.first_seq != name_seq:
            link_error = (
                f"segment header says first seq {header.first_seq} but the file name says "
                f"{name_seq} (renamed or swapped segment)"
            )
        elif prev is not None and header.first_seq != prev.last_seq + 1:
            link_error = (
                f"sequence gap: previous segment ends at seq {prev.last_seq}, this one starts at "
                f"{header.first_seq} (missing, swapped or duplicated segment)"
            )
        elif prev is not None and header.prev_chain != prev.last_crc:
            link_error = (
                f"chain break: segment expects previous chain value {header.prev_chain:#010x}, "
                f"the previous segment ends with {prev.last_crc:#010x}"
            )
        if link_error is not None:
            result.problems.append(Problem("corruption", path, 0, link_error))
            if not keep_going:
                return result
        seg = SegmentScan(
            path=path,
            first_seq=header.first_seq,
            prev_chain=header.prev_chain,
            created_unix_ns=header.created_unix_ns,
            file_size=len(data),
            valid_end=SEGMENT_HEADER_SIZE,
            last_seq=header.first_seq - 1,
            last_crc=header.prev_chain,
            record_count=0,
        )
        problem = _scan_records(data, seg, is_last, max_record_size, index_interval)
        result.segments.append(seg)
        prev = seg
        if problem is not None:
            result.problems.append(problem)
            if problem.kind == "corruption":
                if not keep_going:
                    return result
                # The segment's true end is unknown, so linking the next one to where the
                # damage stopped the scan would report the same damage again as a gap.
                prev = None
    return result


def _scan_records(
    data: bytes, seg: SegmentScan, is_last: bool, max_record_size: int, index_interval: int
) -> Problem | None:
    """Walk the records of one segment, filling ``seg``; return the damage found, if any."""
    data_end = len(data.rstrip(b"\0"))
    off = SEGMENT_HEADER_SIZE
    expected = seg.first_seq
    prev_crc = seg.prev_chain
    next_mark = off
    marks_seq = seg.marks_seq
    marks_off = seg.marks_off
    while off < data_end:
        rec = check_record(data, off, max_record_size)
        if isinstance(rec, str):
            reason = rec
        elif rec.seq != expected:
            reason = f"record has seq {rec.seq} where {expected} was expected"
        elif rec.prev_crc != prev_crc:
            reason = (
                f"chain break at seq {rec.seq}: record links to {rec.prev_crc:#010x}, "
                f"previous record is {prev_crc:#010x}"
            )
        else:
            if off >= next_mark:
                marks_seq.append(rec.seq)
                marks_off.append(off)
                next_mark = off + index_interval
            prev_crc = rec.crc
            expected += 1
            off = rec.end
            continue
        seg.valid_end = off
        seg.last_seq = expected - 1
        seg.last_crc = prev_crc
        seg.record_count = expected - seg.first_seq
        if isinstance(rec, str) and _is_intact_but_oversized(data, off, expected, prev_crc):
            # A lowered max_record_size must never make recovery cut acknowledged records.
            return Problem(
                "corruption",
                seg.path,
                off,
                f"{reason}, yet the record (seq {expected}) is intact: open the log with the "
                "max_record_size it was written with",
            )
        if not is_last:
            return Problem("corruption", seg.path, off, f"{reason} (not in the last segment)")
        later = find_later_batch_record(data, off + 1, data_end, expected, max_record_size)
        if later is not None:
            return Problem(
                "corruption",
                seg.path,
                off,
                f"{reason}; a valid record of a later write batch (seq {later.seq} at offset "
                f"{later.offset}) follows, so this damage is not a torn tail",
            )
        return Problem("torn_tail", seg.path, off, reason, dropped_bytes=data_end - off)
    seg.valid_end = off
    seg.last_seq = expected - 1
    seg.last_crc = prev_crc
    seg.record_count = expected - seg.first_seq
    return None


def _is_intact_but_oversized(data: bytes, off: int, expected: int, prev_crc: int) -> bool:
    """True if the record at ``off`` is valid and in place, only longer than the configured max."""
    rec = check_record(data, off, MAX_LENGTH_FIELD)
    return isinstance(rec, RecordView) and rec.seq == expected and rec.prev_crc == prev_crc


def find_later_batch_record(
    data: bytes, start: int, data_end: int, expected_seq: int, max_record_size: int
) -> RecordView | None:
    """First valid record at or after ``start`` whose write batch began after ``expected_seq``.

    Records of the batch that contains ``expected_seq`` (or an earlier one) are skipped: they are
    part of the torn, unacknowledged write.
    """
    unpack = RECORD_HEADER.unpack_from
    size = len(data)
    limit = min(data_end, size - RECORD_HEADER_SIZE + 1)
    off = start
    while off < limit:
        _crc, _prev, length, seq, _pos, rtype, _fl, _rs = unpack(data, off)
        if (
            rtype != 0
            and expected_seq <= seq < expected_seq + PLAUSIBLE_SEQ_WINDOW
            and length <= size - off - RECORD_HEADER_SIZE
        ):
            rec = check_record(data, off, max_record_size)
            if not isinstance(rec, str):
                if rec.seq - rec.batch_pos > expected_seq:
                    return rec
                off = rec.end
                continue
        off += 1
    return None
