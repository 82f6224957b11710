"""``ackwal repair DIR``: cut a torn tail, or truncate after a corruption point, on purpose.

The on-disk rules live in :mod:`wal.repair`; this is the operator's side: refuse while a server
holds the directory, show the plan, ask, then copy aside and cut. The lock is taken for the
whole run, so no server can start on the directory between the plan and the cut.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Final

from service.tools.common import (
    EXIT_OK,
    SubParsers,
    ToolError,
    ToolParser,
    add_max_record_size,
    add_tool_parser,
    guarded,
    log_directory,
    seq_arg,
)
from service.tools.progress import summary
from service.tools.verify import problem_json
from wal import LockedError
from wal.lock import DirectoryLock, is_locked, read_lock_holder
from wal.repair import RepairPlan, RepairRefusedError, apply_repair, plan_repair
from wal.verify import verify

EXIT_DECLINED: Final = 1
EXIT_REFUSED: Final = 2
EXIT_LOCKED: Final = 4


def register(sub: SubParsers[ToolParser]) -> None:
    parser = add_tool_parser(
        sub,
        "repair",
        help="cut a torn tail, or truncate the log after a seq (copies what it removes aside)",
        description="Repair the log in DIR. Without --truncate-after, only a torn tail (the "
        "unsynced end of the last segment) is cut, as a server start would. With "
        "--truncate-after SEQ, every record after SEQ is removed, later segments too: use it "
        "when `ackwal verify` reports corruption, with the last intact seq it names. Records "
        "removed this way may have been acknowledged. Nothing is deleted: removed bytes are "
        "first copied into *.broken files next to the segments (fsync'd, directory fsync'd) "
        "and whole segments are renamed to NAME.broken. Asks for confirmation on stdin unless "
        "--yes. Refuses while a server holds the directory lock, and holds the lock itself "
        "until it is done.",
        exits=f"""\
  {EXIT_OK}   repaired, or nothing to repair
  {EXIT_DECLINED}   not confirmed: nothing changed
  {EXIT_REFUSED}   refused: corruption that needs --truncate-after SEQ, or a SEQ past the first
      damage (nothing changed)
  {EXIT_LOCKED}   refused: a running server (or another process) holds the directory lock""",
    )
    parser.add_argument("directory", metavar="DIR", help="the data directory (WAL segments)")
    parser.add_argument(
        "--truncate-after",
        type=seq_arg,
        metavar="SEQ",
        help="keep records up to and including SEQ, remove everything after it",
    )
    parser.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    parser.add_argument("--json", action="store_true", help="print the plan and outcome as JSON")
    add_max_record_size(parser)
    parser.set_defaults(func=run)


@guarded("repair")
def run(args: argparse.Namespace) -> int:
    directory = log_directory(args.directory)
    if is_locked(directory):
        raise ToolError(_locked_message(directory, read_lock_holder(directory)), EXIT_LOCKED)
    lock = DirectoryLock(directory)
    try:
        lock.acquire()
    except LockedError as exc:
        raise ToolError(_locked_message(directory, exc.holder_pid), EXIT_LOCKED) from None
    try:
        return _repair(args, directory)
    finally:
        lock.release()


def _locked_message(directory: str, pid: int | None) -> str:
    who = f"pid {pid}" if pid is not None else "another process"
    return f"{directory} is locked by {who}: stop the server before repairing its log"


def _repair(args: argparse.Namespace, directory: str) -> int:
    try:
        plan = plan_repair(
            directory, truncate_after=args.truncate_after, max_record_size=args.max_record_size
        )
    except RepairRefusedError as exc:
        raise ToolError(str(exc), EXIT_REFUSED) from None
    doc: dict[str, Any] = {"plan": plan_json(plan), "applied": False, "copies": []}
    if not args.json:
        print("\n".join(plan_text(plan)))
    if plan.empty:
        if args.json:
            print(json.dumps(doc, indent=2))
        summary(f"repair: nothing to repair in {directory}")
        return EXIT_OK
    if not args.yes and not _confirm():
        if args.json:
            print(json.dumps(doc, indent=2))
        summary("repair: not confirmed; nothing changed")
        return EXIT_DECLINED
    result = apply_repair(plan)
    after = verify(directory, max_record_size=args.max_record_size)
    doc.update(
        applied=True,
        copies=list(result.copies),
        status_after=after.status,
        last_seq_after=after.last_seq,
    )
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        for copy in result.copies:
            print(f"  copied aside: {os.path.basename(copy)}")
        print(f"log is now {after.status}: last seq {after.last_seq}")
    summary(
        f"repair: kept seq {plan.keep_through_seq} and earlier, removed "
        f"{plan.dropped_records:,} valid records, {len(result.copies)} file(s) set aside; "
        f"log {after.status}"
    )
    return EXIT_OK if after.status == "clean" else EXIT_REFUSED


def _confirm() -> bool:
    sys.stderr.write("Proceed? [y/N] ")
    sys.stderr.flush()
    answer = sys.stdin.readline()
    return answer.strip().lower() in ("y", "yes")


def plan_json(plan: RepairPlan) -> dict[str, Any]:
    cut = plan.cut
    return {
        "directory": plan.directory,
        "keep_through_seq": plan.keep_through_seq,
        "last_intact_seq": plan.last_intact_seq,
        "dropped_records": plan.dropped_records,
        "cut": None
        if cut is None
        else {"path": cut.path, "offset": cut.offset, "removed_bytes": cut.removed_bytes},
        "moved_segments": list(plan.moved_segments),
        "problems": [problem_json(p) for p in plan.problems],
    }


def plan_text(plan: RepairPlan) -> list[str]:
    lines = [f"repair plan for {plan.directory}:"]
    lines += [f"  found: {p}" for p in plan.problems] or ["  found: no damage"]
    if plan.empty:
        lines.append(f"  nothing to do: the log ends intact at seq {plan.last_intact_seq}")
        return lines
    lines.append(
        f"  keep records through seq {plan.keep_through_seq} "
        f"(the last intact record is seq {plan.last_intact_seq})"
    )
    if plan.cut is not None:
        name = os.path.basename(plan.cut.path)
        lines.append(
            f"  cut {name} at offset {plan.cut.offset}: {plan.cut.removed_bytes} bytes, "
            f"copied aside to {name}.{plan.cut.offset}.broken first"
        )
    for path in plan.moved_segments:
        name = os.path.basename(path)
        lines.append(f"  move {name} aside to {name}.broken")
    damaged = any(p.kind == "corruption" for p in plan.problems)
    beyond = ", and whatever follows the damage in its segment" if damaged else ""
    if plan.dropped_records:
        lines.append(
            f"  this removes {plan.dropped_records:,} valid records after seq "
            f"{plan.keep_through_seq}{beyond}; they may have been acknowledged"
        )
    else:
        lines.append(f"  no valid record is removed{beyond}")
    return lines
