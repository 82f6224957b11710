"""Recovery at open: scan, refuse corruption, repair a torn tail, clear stale temp files."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import structlog

from wal.errors import CorruptionError
from wal.fileio import FileLayer
from wal.scan import Problem, ScanResult, scan_log
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
        if removed or broken_copy:
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


def _cut_torn_tail(fs: FileLayer, directory: str, torn: Problem, scan: ScanResult) -> str:
    """Copy the damaged bytes aside (``*.broken``), then truncate the segment and sync it."""
    seg = scan.segments[-1]
    data = fs.read_file(torn.path)
    damaged = data[torn.offset : torn.offset + torn.dropped_bytes]
    broken = f"{torn.path}.{torn.offset}.broken"
    if fs.exists(broken):
        fs.unlink(broken)
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
