"""``verify(path)``: a full, read-only check of a log, as a report (the CLI prints it)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

from wal.fileio import OS_FILES, FileLayer
from wal.format import DEFAULT_MAX_RECORD_SIZE
from wal.scan import Problem, scan_log


@dataclass(frozen=True, slots=True)
class VerifyReport:
    directory: str
    segments: int
    record_count: int
    first_seq: int | None
    last_seq: int
    valid_bytes: int
    chain_head: int
    problems: tuple[Problem, ...]

    @property
    def status(self) -> Literal["clean", "torn_tail", "corrupt"]:
        if any(p.kind == "corruption" for p in self.problems):
            return "corrupt"
        return "torn_tail" if self.problems else "clean"


def verify(
    path: str, *, fs: FileLayer = OS_FILES, max_record_size: int = DEFAULT_MAX_RECORD_SIZE
) -> VerifyReport:
    """Check every CRC and chain link in ``path`` and report; never modifies anything.

    Unlike recovery it keeps going after a corruption so that one run lists every damaged spot.
    """
    directory = os.path.abspath(path)
    scan = scan_log(directory, fs, max_record_size=max_record_size, keep_going=True)
    return VerifyReport(
        directory=directory,
        segments=len(scan.segments),
        record_count=scan.record_count,
        first_seq=scan.first_seq,
        last_seq=scan.last_seq,
        valid_bytes=scan.valid_bytes,
        chain_head=scan.chain_head,
        problems=tuple(scan.problems),
    )
