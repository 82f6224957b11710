"""Explicit repair, for an operator (``ackwal repair``): cut a torn tail, or truncate after a seq.

Recovery at open cuts a torn tail by itself and refuses everything else, because dropping
records after a corruption point may drop acknowledged data: that takes a human decision. This
module carries it out once taken. The rules:

* Nothing is ever deleted. Every byte removed is first copied aside into a ``*.broken`` file in
  the same directory (fsync'd, then the directory fsync'd); whole segments after the cut are
  renamed aside to ``NAME.broken``. An existing ``*.broken`` file is never overwritten.
* Segments after the cut move aside newest first, and the cut segment is truncated last, so a
  crash part-way leaves the segments that remain a prefix of the log as it was; running the same
  repair again finishes the job.
* Only an intact prefix is ever kept: a cut after the first damaged spot is refused.
* The caller holds the directory lock (:class:`wal.lock.DirectoryLock`) from planning to the end
  of :func:`apply_repair`; nothing here takes it.
"""

from __future__ import annotations

import bisect
import os
from dataclasses import dataclass

from wal.errors import WalError
from wal.fileio import OS_FILES, FileLayer
from wal.format import (
    DEFAULT_MAX_RECORD_SIZE,
    SEGMENT_HEADER_SIZE,
    RecordView,
    check_record,
)
from wal.scan import Problem, ScanResult, SegmentScan, list_segments, scan_log
from wal.writer import write_all

BROKEN_SUFFIX = ".broken"


class RepairRefusedError(WalError):
    """The requested repair would keep damaged records or drop what it cannot account for."""


@dataclass(frozen=True, slots=True)
class SegmentCut:
    """Truncate ``path`` to ``offset`` bytes; ``removed_bytes`` non-zero bytes follow it."""

    path: str
    offset: int
    removed_bytes: int


@dataclass(frozen=True, slots=True)
class RepairPlan:
    """What a repair will do; nothing has been changed yet."""

    directory: str
    keep_through_seq: int  # the last seq that remains
    last_intact_seq: int  # the last seq before the first damaged spot
    cut: SegmentCut | None
    moved_segments: tuple[str, ...]  # whole segment files renamed aside, newest first
    # Valid records after keep_through_seq (they may have been acknowledged). Records that
    # follow a damaged spot in its own segment cannot be told from garbage and are not counted.
    dropped_records: int
    problems: tuple[Problem, ...]  # every damaged spot the scan found

    @property
    def empty(self) -> bool:
        return self.cut is None and not self.moved_segments


@dataclass(frozen=True, slots=True)
class RepairResult:
    plan: RepairPlan
    copies: tuple[str, ...]  # the *.broken files that now hold what was removed


def plan_repair(
    directory: str,
    fs: FileLayer = OS_FILES,
    *,
    truncate_after: int | None = None,
    max_record_size: int = DEFAULT_MAX_RECORD_SIZE,
) -> RepairPlan:
    """Scan ``directory`` and plan the repair; raise :class:`RepairRefusedError` if impossible.

    Without ``truncate_after`` only a torn tail is repaired (what recovery would do at open);
    corruption is refused with the seq to pass. With it, every record after that seq goes.
    """
    directory = os.path.abspath(directory)
    scan = scan_log(directory, fs, max_record_size=max_record_size, keep_going=True)
    names = list_segments(directory, fs)
    intact = _intact_prefix(scan, directory, names)
    first_damage = scan.problems[0] if scan.problems else None
    if not intact:
        if first_damage is not None:
            raise RepairRefusedError(
                f"wal: nothing intact to keep: {first_damage}; the first segment itself is "
                "damaged, move the files aside by hand"
            )
        return RepairPlan(directory, 0, 0, None, (), 0, ())
    last_intact = intact[-1].last_seq
    first_seq = intact[0].first_seq
    if truncate_after is None:
        if first_damage is not None and first_damage.kind == "corruption":
            raise RepairRefusedError(
                f"wal: {first_damage}. This is not a torn tail; the last intact record is seq "
                f"{last_intact}. To drop everything after it ({_count_after(scan, last_intact)} "
                f"valid records), run again with --truncate-after {last_intact}"
            )
        keep = last_intact
    else:
        keep = truncate_after
        if keep > last_intact:
            where = f"the first damage ({first_damage})" if first_damage else "the end of the log"
            raise RepairRefusedError(
                f"wal: cannot keep records through seq {keep}: the last intact record before "
                f"{where} is seq {last_intact}"
            )
        if keep < first_seq - 1:
            raise RepairRefusedError(
                f"wal: seq {keep} is before the first retained record (seq {first_seq})"
            )
    seg = next((s for s in reversed(intact) if s.first_seq <= keep), intact[0])
    data = fs.read_file(seg.path)
    offset = _end_of_seq(data, seg, keep, max_record_size)
    data_end = len(data.rstrip(b"\0"))
    cut = SegmentCut(seg.path, offset, data_end - offset) if data_end > offset else None
    seg_name = os.path.basename(seg.path)
    seg_index = next(i for i, (_, name) in enumerate(names) if name == seg_name)
    moved = tuple(os.path.join(directory, name) for _, name in reversed(names[seg_index + 1 :]))
    return RepairPlan(
        directory=directory,
        keep_through_seq=keep,
        last_intact_seq=last_intact,
        cut=cut,
        moved_segments=moved,
        dropped_records=_count_after(scan, keep),
        problems=tuple(scan.problems),
    )


def apply_repair(plan: RepairPlan, fs: FileLayer = OS_FILES) -> RepairResult:
    """Carry out ``plan``: copy aside, move later segments aside newest first, then truncate."""
    directory = plan.directory
    copies: list[str] = []
    cut = plan.cut
    if cut is not None:
        data = fs.read_file(cut.path)
        copy = _free_name(fs, f"{cut.path}.{cut.offset}{BROKEN_SUFFIX}")
        out = fs.open_write(copy, create=True)
        try:
            write_all(out, data[cut.offset : cut.offset + cut.removed_bytes], 0)
            out.fsync()
        finally:
            out.close()
        fs.fsync_dir(directory)
        copies.append(copy)
    for path in plan.moved_segments:
        handle = fs.open_write(path, create=False)
        try:
            handle.fsync()
        finally:
            handle.close()
        dest = _free_name(fs, path + BROKEN_SUFFIX)
        fs.rename(path, dest)
        # One directory sync per rename: the segments that remain stay a prefix of the log.
        fs.fsync_dir(directory)
        copies.append(dest)
    if cut is not None:
        handle = fs.open_write(cut.path, create=False)
        try:
            handle.truncate(cut.offset)
            handle.fsync()
        finally:
            handle.close()
        fs.fsync_dir(directory)
    return RepairResult(plan, tuple(copies))


def _intact_prefix(
    scan: ScanResult, directory: str, names: list[tuple[int, str]]
) -> list[SegmentScan]:
    """The segments before the first damaged spot, the damaged one cut short at the damage."""
    if not scan.problems:
        return list(scan.segments)
    first = scan.problems[0]
    order = {os.path.join(directory, name): i for i, (_, name) in enumerate(names)}
    limit = order.get(first.path, len(names))
    out = [s for s in scan.segments if order.get(s.path, len(names)) < limit]
    # Damage inside the records (not a bad header or a broken link) keeps what precedes it.
    if first.offset >= SEGMENT_HEADER_SIZE:
        out += [s for s in scan.segments if s.path == first.path][:1]
    return out


def _count_after(scan: ScanResult, seq: int) -> int:
    return sum(max(0, s.last_seq - max(seq, s.first_seq - 1)) for s in scan.segments)


def _end_of_seq(data: bytes, seg: SegmentScan, seq: int, max_record_size: int) -> int:
    """Byte offset just past record ``seq`` in ``seg`` (the header's end if seq precedes it)."""
    if seq < seg.first_seq:
        return SEGMENT_HEADER_SIZE
    data = data[: seg.valid_end]
    i = max(0, bisect.bisect_right(seg.marks_seq, seq) - 1)
    off = seg.marks_off[i] if seg.marks_off else SEGMENT_HEADER_SIZE
    while True:
        rec = check_record(data, off, max_record_size)
        if not isinstance(rec, RecordView):
            raise RepairRefusedError(f"wal: {seg.path} changed while planning the repair: {rec}")
        if rec.seq == seq:
            return rec.end
        off = rec.end


def _free_name(fs: FileLayer, wanted: str) -> str:
    """``wanted``, or ``stem.N.broken`` for the first N free: earlier copies are evidence."""
    if not fs.exists(wanted):
        return wanted
    stem = wanted.removesuffix(BROKEN_SUFFIX)
    n = 1
    while fs.exists(f"{stem}.{n}{BROKEN_SUFFIX}"):
        n += 1
    return f"{stem}.{n}{BROKEN_SUFFIX}"
