"""``ackwal stat DIR``: what a log holds: segments, seqs, bytes, time range, idempotency window.

The idempotency figures are what a server starting now would rebuild: the request ids of the
entries among the last ``--max-entries`` records whose receive time falls in ``--window``.
Read-only and lock-free (``Wal.open(readonly=True)``), so it is safe while a server runs.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any, Final

from service.entry import entry_request_id
from service.runs import runs_of
from service.settings import Settings
from service.tools.common import (
    EXIT_OK,
    SubParsers,
    ToolParser,
    add_max_record_size,
    add_tool_parser,
    corrupt_log_error,
    crc_hex,
    duration_text,
    guarded,
    live_note,
    lock_holder,
    log_directory,
    open_log,
    positive_float,
    positive_int,
    time_iso,
    time_text,
)
from service.tools.dump import newest_entries
from service.tools.progress import Progress, human_bytes, summary
from wal import CorruptionError, Record, RecordType, Wal
from wal.scan import SegmentScan

EXIT_CORRUPT: Final = 2
RUNS_SHOWN: Final = 10  # newest runs in the text report (--json lists all)
_DEFAULTS: Final = Settings()


def register(sub: SubParsers[ToolParser]) -> None:
    parser = add_tool_parser(
        sub,
        "stat",
        help="summarise a log: segments, seqs, bytes, times, idempotency window (read-only)",
        description="Summarise the log in DIR: its segments (name, seq range, bytes), seq "
        "range, bytes, the receive times of its first and last entries (UTC), the chain head, "
        "the runs (each start of the service; a run that ended without a seal crashed, was "
        "killed or failed stop), and the idempotency window a server starting now would "
        "rebuild. Read-only and lock-free: safe while a server runs.",
        exits=f"""\
  {EXIT_OK}   done
  {EXIT_CORRUPT}   the log is corrupt and cannot be read (see `ackwal verify`)""",
    )
    parser.add_argument("directory", metavar="DIR", help="the data directory (WAL segments)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--window",
        type=positive_float,
        default=_DEFAULTS.idempotency_window,
        metavar="SECONDS",
        help="the idempotency_window setting (default: %(default)s)",
    )
    parser.add_argument(
        "--max-entries",
        type=positive_int,
        default=_DEFAULTS.idempotency_max_entries,
        metavar="N",
        help="the idempotency_max_entries setting (default: %(default)s)",
    )
    add_max_record_size(parser)
    parser.set_defaults(func=run)


@dataclass(frozen=True, slots=True)
class WindowStat:
    """The entries in the idempotency window (each holds one request id)."""

    window_seconds: float
    max_entries: int
    request_ids: int
    oldest_seq: int | None
    oldest_recv_ms: int | None
    newest_seq: int | None
    newest_recv_ms: int | None


def idempotency_window(
    wal: Wal, window_seconds: float, max_entries: int, now_ms: int, progress: Progress
) -> tuple[WindowStat, tuple[int, int] | None]:
    """The window as the journal rebuilds it at start, and (seq, recv_ms) of the last entry."""
    start = max(wal.first_seq, wal.last_seq - max_entries + 1)
    cutoff = now_ms - int(window_seconds * 1000)
    count = 0
    oldest: tuple[int, int] | None = None
    newest: tuple[int, int] | None = None
    last_entry: tuple[int, int] | None = None
    if wal.last_seq >= start:
        progress.relabel("reading the window", wal.last_seq - start + 1, "records")
        for rec in wal.read(start):
            progress.advance(1)
            if rec.type != RecordType.ENTRY:
                continue
            try:
                _rid, recv_ms = entry_request_id(rec.payload)
            except (ValueError, TypeError, IndexError):
                continue
            last_entry = (rec.seq, recv_ms)
            if recv_ms >= cutoff:
                count += 1
                if oldest is None:
                    oldest = last_entry
                newest = last_entry
    stat = WindowStat(
        window_seconds,
        max_entries,
        count,
        oldest[0] if oldest else None,
        oldest[1] if oldest else None,
        newest[0] if newest else None,
        newest[1] if newest else None,
    )
    if last_entry is None and start > wal.first_seq:
        older = newest_entries(wal, wal.first_seq, start - 1, 1)
        if older:
            last_entry = (older[0].seq, _recv_ms(older[0].payload) or 0)
    return stat, last_entry


def first_entry(wal: Wal) -> tuple[int, int] | None:
    """(seq, recv_ms) of the oldest entry."""
    if wal.last_seq < wal.first_seq:
        return None
    for rec in wal.read(wal.first_seq):
        if rec.type == RecordType.ENTRY:
            recv_ms = _recv_ms(rec.payload)
            return None if recv_ms is None else (rec.seq, recv_ms)
    return None


def _recv_ms(payload: bytes) -> int | None:
    try:
        return int(entry_request_id(payload)[1])
    except (ValueError, TypeError, IndexError):
        return None


def _segment_json(seg: SegmentScan) -> dict[str, Any]:
    try:
        on_disk = os.path.getsize(seg.path)
    except FileNotFoundError:
        on_disk = 0
    return {
        "name": seg.name,
        "first_seq": seg.first_seq,
        "last_seq": seg.last_seq,
        "records": seg.record_count,
        "valid_bytes": seg.valid_end,
        "file_bytes": on_disk,
        "created_time": time_iso(seg.created_unix_ns // 1_000_000),
    }


def _other_files(directory: str, segments: list[dict[str, Any]]) -> list[dict[str, Any]]:
    names = {s["name"] for s in segments}
    out = []
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if name in names or not os.path.isfile(path):
            continue
        try:
            out.append({"name": name, "bytes": os.path.getsize(path)})
        except FileNotFoundError:
            continue
    return out


@guarded("stat")
def run(args: argparse.Namespace) -> int:
    directory = log_directory(args.directory)
    holder = lock_holder(directory)
    now_ms = time.time_ns() // 1_000_000
    with Progress("scanning", 0) as progress:
        try:
            wal = open_log(directory, args.max_record_size, progress, holder is not None)
        except CorruptionError as exc:
            raise corrupt_log_error(exc) from None
        with wal:
            segments = [_segment_json(s) for s in wal.recovery.scan.segments]
            first = first_entry(wal)
            window, last = idempotency_window(wal, args.window, args.max_entries, now_ms, progress)
            torn = wal.recovery.torn_tail
            records = wal.last_seq - wal.first_seq + 1 if segments else 0
            runs = _runs_json(wal, holder, progress) if records else []
            doc: dict[str, Any] = {
                "directory": directory,
                "held_by_pid": holder,
                "first_seq": wal.first_seq if records else None,
                "last_seq": wal.last_seq,
                "records": records,
                "valid_bytes": sum(s["valid_bytes"] for s in segments),
                "file_bytes": sum(s["file_bytes"] for s in segments),
                "chain_head": crc_hex(wal.chain_head),
                "first_entry": _entry_json(first),
                "last_entry": _entry_json(last),
                "torn_tail": None
                if torn is None
                else {"path": torn.path, "offset": torn.offset, "bytes": torn.dropped_bytes},
                "idempotency": asdict(window)
                | {
                    "oldest_time": time_iso(window.oldest_recv_ms),
                    "newest_time": time_iso(window.newest_recv_ms),
                },
                "runs": runs,
                "segments": segments,
                "other_files": _other_files(directory, segments),
            }
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print("\n".join(stat_text(doc, holder)))
    summary(
        f"stat: {records:,} records in {len(segments)} segments, "
        f"{human_bytes(doc['valid_bytes'])}, read in {progress.elapsed:.2f}s"
    )
    return EXIT_OK


def _runs_json(wal: Wal, holder: int | None, progress: Progress) -> list[dict[str, Any]]:
    """Every run in the retained log; ``state`` is sealed, unsealed (it ended in a crash, a
    kill or a fail-stop) or running (the newest run of a directory a server holds)."""
    progress.relabel("reading runs", wal.last_seq - wal.first_seq + 1, "records")
    found = runs_of(_counted(wal.read(wal.first_seq), progress))
    out = []
    for i, run in enumerate(found):
        doc = run.to_json()
        running = holder is not None and i == len(found) - 1 and not run.sealed
        doc["state"] = "sealed" if run.sealed else "running" if running else "unsealed"
        doc["started_time"] = time_iso(doc["started_ms"])
        out.append(doc)
    return out


def _counted(records: Iterator[Record], progress: Progress) -> Iterator[Record]:
    for rec in records:
        progress.advance(1)
        yield rec


def _entry_json(entry: tuple[int, int] | None) -> dict[str, Any] | None:
    if entry is None:
        return None
    return {"seq": entry[0], "recv_ms": entry[1], "recv_time": time_iso(entry[1])}


def stat_text(doc: dict[str, Any], holder: int | None) -> list[str]:
    """The human report, at most 80 columns wide."""
    records = doc["records"]
    seqs = f"seq {doc['first_seq']}..{doc['last_seq']}" if records else "empty"
    first, last = doc["first_entry"], doc["last_entry"]
    lines = [
        f"log          {doc['directory']}",
        f"lock         {live_note(holder)}",
        f"records      {records:,} ({seqs})",
        f"size         {human_bytes(doc['valid_bytes'])} of records, "
        f"{human_bytes(doc['file_bytes'])} on disk, {len(doc['segments'])} segments",
    ]
    if first and last:
        span = duration_text((last["recv_ms"] - first["recv_ms"]) / 1000)
        lines.append(f"time range   {time_text(first['recv_ms'])} ..")
        lines.append(f"             {time_text(last['recv_ms'])} UTC ({span})")
    else:
        lines.append("time range   - (no entries)")
    lines.append(f"chain head   {doc['chain_head']}")
    torn = doc["torn_tail"]
    if torn is not None:
        name = os.path.basename(torn["path"])
        lines.append(f"torn tail    {torn['bytes']} bytes at {name}:{torn['offset']}")
    idem = doc["idempotency"]
    lines.append(
        f"idempotency  {idem['request_ids']:,} request ids in the "
        f"{duration_text(idem['window_seconds'])} window (max {idem['max_entries']:,})"
    )
    for end in ("oldest", "newest"):
        if idem[f"{end}_seq"] is not None:
            when = time_text(idem[f"{end}_recv_ms"])
            lines.append(f"             {end} seq {idem[f'{end}_seq']} at {when}")
    runs = doc["runs"]
    unsealed = sum(1 for r in runs if r["state"] == "unsealed")
    lines.append(f"runs         {len(runs)}, {unsealed} ended without a seal")
    for r in runs[-RUNS_SHOWN:]:
        mark = {"sealed": "sealed", "running": "running", "unsealed": "UNSEALED"}[r["state"]]
        seqs = f"{r['started_seq']}..{r['last_seq']}"
        lines.append(f"  {mark:<8} seq {seqs:<21} {r['entries']:>9} entries  pid {r['pid'] or '-'}")
    lines.append("segments")
    lines.append(
        f"  {'NAME':<24} {'FIRST':>10} {'LAST':>10} {'RECORDS':>9} {'BYTES':>9} {'ON DISK':>9}"
    )
    for s in doc["segments"]:
        lines.append(
            f"  {s['name']:<24} {s['first_seq']:>10} {s['last_seq']:>10} {s['records']:>9} "
            f"{_short(s['valid_bytes']):>9} {_short(s['file_bytes']):>9}"
        )
    if doc["other_files"]:
        lines.append("other files")
        lines.extend(f"  {f['name']}  {human_bytes(f['bytes'])}" for f in doc["other_files"])
    return lines


def _short(n: int) -> str:
    return human_bytes(n).replace(" ", "")
