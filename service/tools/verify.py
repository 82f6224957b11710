"""``ackwal verify DIR``: check every CRC and chain link, list every damaged spot.

Read-only (``wal.verify`` reads the segment files and changes nothing), so it is safe while a
server runs. On a live log, damage in the last segment may be a batch caught half-written; it
is reported only if a second scan finds it at the same place.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from typing import Any, Final

from service.tools.common import (
    LIVE_RESCAN_DELAY,
    LIVE_RESCANS,
    CountingFiles,
    SubParsers,
    ToolParser,
    add_max_record_size,
    add_tool_parser,
    crc_hex,
    guarded,
    live_note,
    lock_holder,
    log_directory,
    segment_bytes,
)
from service.tools.progress import Progress, human_bytes, summary
from wal.scan import Problem
from wal.verify import VerifyReport, verify

EXIT_CLEAN: Final = 0
EXIT_TORN_TAIL: Final = 1
EXIT_CORRUPT: Final = 2
STATUS_EXIT: Final = {"clean": EXIT_CLEAN, "torn_tail": EXIT_TORN_TAIL, "corrupt": EXIT_CORRUPT}


def register(sub: SubParsers[ToolParser]) -> None:
    parser = add_tool_parser(
        sub,
        "verify",
        help="check every CRC and chain link of a log (read-only)",
        description="Scan every segment of the log in DIR: segment headers, record CRCs, the "
        "CRC chain across records and segments, sequence numbers. Prints every problem with "
        "its file and byte offset. Read-only and lock-free: safe while a server runs.",
        exits=f"""\
  {EXIT_CLEAN}   clean
  {EXIT_TORN_TAIL}   torn tail only (the unsynced end of the last segment; the next start cuts it)
  {EXIT_CORRUPT}   corruption (the service refuses to start: see `ackwal repair`)""",
    )
    parser.add_argument("directory", metavar="DIR", help="the data directory (WAL segments)")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    add_max_record_size(parser)
    parser.set_defaults(func=run)


def verify_live(
    directory: str, max_record_size: int, progress: Progress, live: bool
) -> tuple[VerifyReport, tuple[Problem, ...]]:
    """Verify; on a live log, re-scan until each problem is seen twice in the same place.

    Returns the report of the confirmed problems and those still in flux after the last scan.
    """

    def scan() -> VerifyReport:
        progress.relabel("verifying", segment_bytes(directory))
        return verify(directory, fs=CountingFiles(progress), max_record_size=max_record_size)

    report = scan()
    if not live or not report.problems:
        return report, ()
    flux: tuple[Problem, ...] = ()
    for _ in range(LIVE_RESCANS):
        time.sleep(LIVE_RESCAN_DELAY)
        seen = {_key(p) for p in report.problems}
        report = scan()
        flux = tuple(p for p in report.problems if _key(p) not in seen)
        if not flux:
            return report, ()
    confirmed = tuple(p for p in report.problems if p not in flux)
    return dataclasses.replace(report, problems=confirmed), flux


def _key(problem: Problem) -> tuple[str, str, int]:
    return problem.kind, problem.path, problem.offset


def problem_json(problem: Problem) -> dict[str, Any]:
    return {
        "kind": problem.kind,
        "file": os.path.basename(problem.path),
        "path": problem.path,
        "offset": problem.offset,
        "reason": problem.reason,
        "dropped_bytes": problem.dropped_bytes,
    }


@guarded("verify")
def run(args: argparse.Namespace) -> int:
    directory = log_directory(args.directory)
    holder = lock_holder(directory)
    with Progress("verifying", 0) as progress:
        report, flux = verify_live(directory, args.max_record_size, progress, holder is not None)
    code = STATUS_EXIT[report.status]
    if args.json:
        print(
            json.dumps(
                {
                    "directory": report.directory,
                    "status": report.status,
                    "exit_code": code,
                    "held_by_pid": holder,
                    "segments": report.segments,
                    "records": report.record_count,
                    "first_seq": report.first_seq,
                    "last_seq": report.last_seq,
                    "valid_bytes": report.valid_bytes,
                    "chain_head": crc_hex(report.chain_head),
                    "problems": [problem_json(p) for p in report.problems],
                    "in_flux": [problem_json(p) for p in flux],
                },
                indent=2,
            )
        )
    else:
        seqs = f"seq {report.first_seq}..{report.last_seq}" if report.record_count else "no seq"
        print(f"{report.directory}: {report.status.upper().replace('_', ' ')}")
        print(
            f"  {report.segments} segments, {report.record_count:,} records ({seqs}), "
            f"{human_bytes(report.valid_bytes)} valid, chain head {crc_hex(report.chain_head)}"
        )
        print(f"  {live_note(holder)}")
        for problem in report.problems:
            print(f"  {problem}")
        for problem in flux:
            print(f"  (live tail in flux, not counted) {problem}")
    summary(
        f"verify: {report.status}, {len(report.problems)} problem(s), "
        f"{report.record_count:,} records in {report.segments} segments checked in "
        f"{progress.elapsed:.2f}s (exit {code})"
    )
    return code
