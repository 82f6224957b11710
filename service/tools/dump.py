"""``ackwal dump DIR``: print records, as text for people or as JSON lines for programs.

ENTRY records are decoded (service.entry.decode_entry); any other record type is printed
generically: its type, size and payload (msgpack-decoded when it is msgpack). ``--last N`` is
the monitoring view: the newest N commands with their event counts and types. Read-only and
lock-free (``Wal.open(readonly=True)``), so it is safe while a server runs; on a live log it
shows what was written when the scan ran.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any, Final, TextIO

import msgpack

from service.entry import StoredEntry, decode_entry, entry_request_id
from service.tools.common import (
    EXIT_OK,
    EXIT_USAGE,
    BytesFormat,
    SubParsers,
    ToolError,
    ToolParser,
    add_max_record_size,
    add_tool_parser,
    corrupt_log_error,
    crc_hex,
    encode_bytes,
    guarded,
    lock_holder,
    log_directory,
    open_log,
    positive_int,
    seq_arg,
    time_iso,
    time_text,
    type_name,
)
from service.tools.progress import Progress, human_bytes, summary
from wal import CorruptionError, Record, RecordType, Wal

EXIT_NO_MATCH: Final = 1
EXIT_CORRUPT: Final = 2
PREVIEW_BYTES: Final = 16
LAST_HEADER: Final = f"{'SEQ':>10}  {'UTC TIME':<12}  {'COMMAND TYPE':<20}  {'EV':>3}  EVENT TYPES"


def register(sub: SubParsers[ToolParser]) -> None:
    parser = add_tool_parser(
        sub,
        "dump",
        help="print records as text or JSON lines (read-only)",
        description="Print the records of the log in DIR, oldest first. ENTRY records are "
        "decoded; other record types are printed generically (type, size, payload). With "
        "--json, one JSON object per line; binary fields (command, response, event data, "
        "digests, other payloads) are hex strings, or base64 with --bytes base64; request ids "
        "are UUID strings; times are UTC. Read-only and lock-free: safe while a server runs.",
        exits=f"""\
  {EXIT_OK}   records printed
  {EXIT_NO_MATCH}   no record matched (empty log or range, unknown request id)
  {EXIT_CORRUPT}   the log is corrupt and cannot be read (see `ackwal verify`)""",
    )
    parser.add_argument("directory", metavar="DIR", help="the data directory (WAL segments)")
    parser.add_argument("--from", dest="from_seq", type=seq_arg, metavar="SEQ",
                        help="first seq to print (default: the first retained)")  # fmt: skip
    parser.add_argument("--to", dest="to_seq", type=seq_arg, metavar="SEQ",
                        help="last seq to print (default: the last written)")  # fmt: skip
    parser.add_argument(
        "--last",
        type=positive_int,
        metavar="N",
        help="monitoring view: the newest N commands (entries) up to --to, with event counts "
        "and types",
    )
    parser.add_argument(
        "--request-id", type=_uuid_arg, metavar="UUID", help="only the entry with this request id"
    )
    parser.add_argument("--json", action="store_true", help="JSON lines instead of text")
    parser.add_argument(
        "--bytes",
        dest="bytes_format",
        choices=["hex", "base64"],
        default="hex",
        help="how --json writes binary fields (default: hex)",
    )
    add_max_record_size(parser)
    parser.set_defaults(func=run)


def _uuid_arg(text: str) -> bytes:
    try:
        return uuid.UUID(text).bytes
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a UUID, got {text!r}") from None


@guarded("dump")
def run(args: argparse.Namespace) -> int:
    directory = log_directory(args.directory)
    if args.from_seq is not None and args.to_seq is not None and args.from_seq > args.to_seq:
        raise ToolError(f"--from {args.from_seq} is after --to {args.to_seq}", EXIT_USAGE)
    if args.last is not None and args.from_seq is not None:
        raise ToolError(
            "--last counts back from --to; it cannot be combined with --from", EXIT_USAGE
        )
    holder = lock_holder(directory)
    match = _request_filter(args.request_id)
    printed = 0
    first_printed = last_printed = 0
    with Progress("scanning", 0) as progress:
        try:
            wal = open_log(directory, args.max_record_size, progress, holder is not None)
        except CorruptionError as exc:
            raise corrupt_log_error(exc) from None
        with wal:
            lo = wal.first_seq if args.from_seq is None else max(args.from_seq, wal.first_seq)
            hi = wal.last_seq if args.to_seq is None else min(args.to_seq, wal.last_seq)
            if args.last is not None:
                records: Iterator[Record] = iter(newest_entries(wal, lo, hi, args.last, match))
                show = _last_json if args.json else _last_text
            else:
                progress.relabel("reading", max(hi - lo + 1, 0), "records")
                if _isatty(sys.stdout):  # the records scroll by on the same terminal
                    progress.close()
                    progress.enabled = False
                records = _select(wal, lo, hi, match, progress)
                show = _record_json if args.json else _record_text
            try:
                if args.last is not None and not args.json:
                    print(LAST_HEADER)
                for rec in records:
                    print(show(rec, args.bytes_format))
                    printed += 1
                    first_printed = first_printed or rec.seq
                    last_printed = rec.seq
                sys.stdout.flush()
            except BrokenPipeError:
                _silence_stdout()  # `ackwal dump DIR | head`: the reader has seen enough
                return EXIT_OK
            torn = wal.recovery.torn_tail
    if torn is not None and holder is None:
        summary(f"note: {torn}; the records in it are not shown (the next server start cuts it)")
    if not printed:
        held = f"seq {wal.first_seq}..{wal.last_seq}" if wal.last_seq >= wal.first_seq else "empty"
        summary(f"dump: no record matched in {directory} (the log: {held})")
        return EXIT_NO_MATCH
    summary(
        f"dump: {printed:,} record(s) (seq {first_printed}..{last_printed}) from {directory} "
        f"in {progress.elapsed:.2f}s"
    )
    return EXIT_OK


def _request_filter(rid: bytes | None) -> Callable[[Record], bool]:
    if rid is None:
        return lambda rec: True

    def match(rec: Record) -> bool:
        if rec.type != RecordType.ENTRY:
            return False
        try:
            return bool(entry_request_id(rec.payload)[0] == rid)
        except (ValueError, TypeError, IndexError):
            return False

    return match


def _select(
    wal: Wal, lo: int, hi: int, match: Callable[[Record], bool], progress: Progress
) -> Iterator[Record]:
    if hi < lo:
        return
    for rec in wal.read(lo, hi):
        progress.advance(1)
        if match(rec):
            yield rec


def newest_entries(
    wal: Wal, lo: int, hi: int, n: int, match: Callable[[Record], bool] = lambda r: True
) -> list[Record]:
    """The newest ``n`` matching ENTRY records with lo <= seq <= hi, oldest first.

    Reads backwards in doubling windows, so the usual case reads little more than n records.
    """
    found: list[Record] = []
    end = hi
    span = n
    while end >= lo and len(found) < n:
        start = max(lo, end - span + 1)
        chunk = [r for r in wal.read(start, end) if r.type == RecordType.ENTRY and match(r)]
        found = chunk + found
        end = start - 1
        span *= 2
    return found[-n:]


def _entry(rec: Record) -> StoredEntry | None:
    try:
        return decode_entry(rec.seq, rec.payload)
    except (ValueError, TypeError):
        return None


# -- text -----------------------------------------------------------------------------------------


def _record_text(rec: Record, fmt: BytesFormat) -> str:
    entry = _entry(rec) if rec.type == RecordType.ENTRY else None
    if entry is None:
        return _generic_text(rec)
    parts = [
        f"seq {rec.seq}",
        time_text(entry.recv_ms),
        entry.command_type,
        f"request {entry.request_uuid}",
        f"command {_preview(entry.command)}",
        "response -" if entry.response is None else f"response {_preview(entry.response)}",
        f"events {_event_summary(entry.events)}",
    ]
    if entry.ts_ms is not None:
        parts.append(f"ts {time_text(entry.ts_ms)}")
    if entry.duration_us is not None:
        parts.append(f"took {entry.duration_us} us")
    return "  ".join(parts)


def _generic_text(rec: Record) -> str:
    what = "undecodable ENTRY" if rec.type == RecordType.ENTRY else type_name(rec.type)
    head = f"seq {rec.seq}  {what} (type {rec.type})  {human_bytes(len(rec.payload))}"
    decoded = _unpack(rec.payload)
    if decoded is _NOT_MSGPACK:
        return f"{head}  payload {_preview(rec.payload)}"
    return f"{head}  {json.dumps(_jsonable(decoded, 'hex'), sort_keys=True)}"


def _preview(data: bytes) -> str:
    more = ".." if len(data) > PREVIEW_BYTES else ""
    return f"{human_bytes(len(data))} {data[:PREVIEW_BYTES].hex()}{more}".rstrip()


def _event_types(events: list[dict[str, Any]]) -> Counter[str]:
    return Counter(str(e.get("type")) for e in events if isinstance(e, dict))


def _event_summary(events: list[dict[str, Any]]) -> str:
    if not events:
        return "0"
    types = ", ".join(t if c == 1 else f"{t} x{c}" for t, c in _event_types(events).items())
    return f"{len(events)}: {types}"


def _last_text(rec: Record, fmt: BytesFormat) -> str:
    entry = _entry(rec)
    if entry is None:
        return f"{rec.seq:>10}  {_generic_text(rec)}"
    types = ", ".join(t if c == 1 else f"{t} x{c}" for t, c in _event_types(entry.events).items())
    clock = time_text(entry.recv_ms)[11:]  # the date is in --json and in `ackwal stat`
    line = f"{rec.seq:>10}  {clock}  {entry.command_type[:20]:<20}  "
    line += f"{len(entry.events):>3}  {types}"
    return line if len(line) <= 80 else line[:78] + ".."


# -- JSON -----------------------------------------------------------------------------------------


def _record_json(rec: Record, fmt: BytesFormat) -> str:
    entry = _entry(rec) if rec.type == RecordType.ENTRY else None
    if entry is None:
        decoded = _unpack(rec.payload)
        out: dict[str, Any] = {
            "seq": rec.seq,
            "type": type_name(rec.type),
            "type_code": rec.type,
            "crc": crc_hex(rec.crc),
            "size": len(rec.payload),
            "payload": encode_bytes(rec.payload, fmt),
        }
        if decoded is not _NOT_MSGPACK:
            out["decoded"] = _jsonable(decoded, fmt)
        return json.dumps(out)
    return json.dumps(
        {
            "seq": rec.seq,
            "type": "ENTRY",
            "crc": crc_hex(rec.crc),
            "request_id": str(entry.request_uuid),
            "recv_ms": entry.recv_ms,
            "recv_time": time_iso(entry.recv_ms),
            "command_type": entry.command_type,
            "command": encode_bytes(entry.command, fmt),
            "response": encode_bytes(entry.response, fmt),
            "events": [
                {
                    "type": e.get("type"),
                    "key": e.get("key"),
                    "data": encode_bytes(e.get("data", b""), fmt),
                }
                for e in entry.events
            ],
            "ts_ms": entry.ts_ms,
            "pre_digest": encode_bytes(entry.pre_digest, fmt),
            "post_digest": encode_bytes(entry.post_digest, fmt),
            "duration_us": entry.duration_us,
        }
    )


def _last_json(rec: Record, fmt: BytesFormat) -> str:
    entry = _entry(rec)
    if entry is None:
        return _record_json(rec, fmt)
    return json.dumps(
        {
            "seq": rec.seq,
            "recv_ms": entry.recv_ms,
            "recv_time": time_iso(entry.recv_ms),
            "request_id": str(entry.request_uuid),
            "command_type": entry.command_type,
            "events": len(entry.events),
            "event_types": dict(_event_types(entry.events)),
            "duration_us": entry.duration_us,
        }
    )


_NOT_MSGPACK: Final = object()


def _unpack(payload: bytes) -> Any:
    try:
        return msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except Exception:  # msgpack raises ValueError, TypeError and private types on garbage
        return _NOT_MSGPACK


def _jsonable(value: Any, fmt: BytesFormat) -> Any:
    """A msgpack value as JSON: bytes encoded per ``fmt``, map keys as strings."""
    if isinstance(value, bytes):
        return encode_bytes(value, fmt)
    if isinstance(value, dict):
        return {
            (k if isinstance(k, str) else json.dumps(_jsonable(k, fmt))): _jsonable(v, fmt)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_jsonable(v, fmt) for v in value]
    if isinstance(value, msgpack.ExtType):
        return {"ext": value.code, "data": encode_bytes(value.data, fmt)}
    return value


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _silence_stdout() -> None:
    with contextlib.suppress(OSError, ValueError, io.UnsupportedOperation):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
