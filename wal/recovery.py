"""Recovery at open: scan, refuse corruption, repair a torn tail, clear stale temp files, and
make what the writer builds on durable (the last segment and the directory)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import structlog

from wal.errors import CorruptionError
from wal.fileio import FileLayer
from wal.scan import Problem, ScanResult, SegmentScan, scan_log
from wal.writer import TMP_SUFFIX, write_all

log = structlog.get_logger("wal")


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    """What recovery found and did; the service exposes it in logs and metrics."""

    scan: ScanResult
    torn_tail: Problem | None
    broken_copy: str | None
    dropped_bytes: int
    removed_temp_files: tuple[str, ...]
    duration_seconds: float


def recover(
    directory: str,
    fs: FileLayer,
    *,
    max_record_size: int,
    index_interval: int,
    repair: bool,
) -> RecoveryReport:
    """Scan ``directory``; raise :class:`CorruptionError` on corruption; repair a torn tail.

    A writable open also rewrites and fsyncs the last segment and fsyncs the directory, so that
    nothing acknowledged later depends on bytes or names a previous process never synced.

    With ``repair=False`` (read-only opens) nothing is modified: a torn tail is only reported and
    readers stop before it.
    """
    started = time.monotonic()
    scan = scan_log(directory, fs, max_record_size=max_record_size, index_interval=index_interval)
    if scan.corruption:
        problem = scan.corruption[0]
        log.critical(
            "wal.corruption", path=problem.path, offset=problem.offset, reason=problem.reason
        )
        raise CorruptionError(problem.path, problem.offset, problem.reason)
    torn = scan.torn_tail
    broken_copy = None
    removed: list[str] = []
    if repair:
        for name in fs.listdir(directory):
            if name.endswith(TMP_SUFFIX):
                fs.unlink(os.path.join(directory, name))
                removed.append(name)
        if torn is not None:
            broken_copy = _cut_torn_tail(fs, directory, torn, scan)
        if scan.segments:
            _resync_last_segment(fs, scan.segments[-1])
        # Always: a crashed writer may have renamed a new segment into place without syncing
        # the directory, and the next records would be acknowledged inside it.
        fs.fsync_dir(directory)
    if torn is not None:
        log.warning(
            "wal.torn_tail",
            path=torn.path,
            offset=torn.offset,
            reason=torn.reason,
            dropped_bytes=torn.dropped_bytes,
            broken_copy=broken_copy,
            repaired=repair,
        )
    return RecoveryReport(
        scan=scan,
        torn_tail=torn,
        broken_copy=broken_copy,
        dropped_bytes=torn.dropped_bytes if torn else 0,
        removed_temp_files=tuple(removed),
        duration_seconds=time.monotonic() - started,
    )


def _resync_last_segment(fs: FileLayer, seg: SegmentScan) -> None:
    """Rewrite the valid bytes of the last segment and fsync them before anything is appended.

    They may be readable without being on disk: written by a process that died before its
    fdatasync, or written before an fdatasync that failed (Linux then marks the pages clean and
    no later fsync writes them). The writer links new records and segments to them, so they
    must be durable first; rewriting dirties the pages again, an fsync alone would not.
    """
    data = fs.read_file(seg.path)[: seg.valid_end]
    handle = fs.open_write(seg.path, create=False)
    try:
        write_all(handle, data, 0)
        handle.fsync()
    finally:
        handle.close()


def _cut_torn_tail(fs: FileLayer, directory: str, torn: Problem, scan: ScanResult) -> str:
    """Copy the damaged bytes aside (``*.broken``), then truncate the segment and sync it."""
    seg = scan.segments[-1]
    data = fs.read_file(torn.path)
    damaged = data[torn.offset : torn.offset + torn.dropped_bytes]
    broken = f"{torn.path}.{torn.offset}.broken"
    n = 1
    while fs.exists(broken):  # an earlier tear at the same offset: keep both copies
        broken = f"{torn.path}.{torn.offset}.{n}.broken"
        n += 1
    out = fs.open_write(broken, create=True)
    try:
        write_all(out, damaged, 0)
        out.fsync()
    finally:
        out.close()
    fs.fsync_dir(directory)
    handle = fs.open_write(torn.path, create=False)
    try:
        handle.truncate(torn.offset)
        handle.fsync()
    finally:
        handle.close()
    seg.file_size = torn.offset
    return broken
