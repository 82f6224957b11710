"""Writes the golden WAL directory ``tests/golden/wal_v1`` that pins format version 1.

The files are built with :mod:`wal.format` from fixed inputs (payloads, record types, batch
boundaries, ``created_unix_ns``), so the same code always produces the same bytes.
``tests/wal/test_golden.py`` re-encodes these inputs and compares them with the files checked
in, and reads the files back through the real reader.

Regenerate ONLY when the on-disk format changes on purpose, i.e. together with a bump of
``wal.format.FORMAT_VERSION`` (write the new files to a new ``wal_v<N>`` directory and keep the
old one for as long as old logs must stay readable) and an update of docs/FORMAT.md. If the test
fails after any other change, the change broke the format: fix the code, not the golden files.

    .venv/bin/python -m tests.golden.make_golden            # (re)write tests/golden/wal_v1
    .venv/bin/python -m tests.golden.make_golden --explain  # annotated hex dump for FORMAT.md
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import NamedTuple

from wal.format import (
    RECORD_HEADER,
    RECORD_HEADER_SIZE,
    SEGMENT_HEADER_SIZE,
    RecordType,
    encode_records,
    encode_segment_header,
    segment_name,
)

GOLDEN_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "wal_v1")
CREATED_UNIX_NS = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z


class Batch(NamedTuple):
    """One write batch: records of one type, framed together (batch_pos 0, 1, ...)."""

    record_type: int
    payloads: tuple[bytes, ...]


# Segments in order; each is a list of batches. Segment 1 is the worked example in FORMAT.md.
SEGMENTS: tuple[tuple[Batch, ...], ...] = (
    (Batch(RecordType.ENTRY, (b"hello", b"world!")),),
    (
        # msgpack of {"op": "append", "qty": 500}, then an empty payload
        Batch(RecordType.ENTRY, (b"\x82\xa2op\xa6append\xa3qty\xcd\x01\xf4", b"")),
        Batch(RecordType.RUN_SEALED, (b"\x80",)),
    ),
)


class GoldenRecord(NamedTuple):
    seq: int
    type: int
    payload: bytes


def golden_records() -> list[GoldenRecord]:
    """Every record of the golden log, in seq order."""
    out: list[GoldenRecord] = []
    for batches in SEGMENTS:
        for batch in batches:
            for payload in batch.payloads:
                out.append(GoldenRecord(len(out) + 1, batch.record_type, payload))
    return out


def build_segments() -> tuple[dict[str, bytes], int]:
    """File name -> bytes of every golden segment, and the chain head of the whole log."""
    files: dict[str, bytes] = {}
    seq = 1
    chain = 0
    for index, batches in enumerate(SEGMENTS):
        data = bytearray(encode_segment_header(seq, chain, CREATED_UNIX_NS + index * 10**9))
        name = segment_name(seq)
        for batch in batches:
            buf, chain = encode_records(batch.payloads, seq, chain, batch.record_type)
            data += buf
            seq += len(batch.payloads)
        files[name] = bytes(data)
    return files, chain


def write_golden(directory: str = GOLDEN_DIR) -> None:
    os.makedirs(directory, exist_ok=True)
    files, _ = build_segments()
    for name in os.listdir(directory):
        if name.endswith(".wal"):
            os.unlink(os.path.join(directory, name))
    for name, data in files.items():
        with open(os.path.join(directory, name), "wb") as f:
            f.write(data)


def _hexline(data: bytes, start: int, end: int, note: str) -> str:
    chunk = data[start:end].hex(" ")
    return f"{start:04x}  {chunk:<36} {note}"


def explain() -> str:
    """An annotated hex dump of the first golden segment (the example in docs/FORMAT.md)."""
    files, _ = build_segments()
    name = next(iter(files))
    data = files[name]
    lines = [f"{name} ({len(data)} bytes)", "", "segment header:"]
    fields = (
        (0, 8, "magic 'ACKWALSG'"),
        (8, 10, "format_version = 1"),
        (10, 12, "header_size = 48"),
        (12, 16, "flags = 0"),
        (16, 24, "first_seq = 1"),
        (24, 28, "prev_chain = 0 (first segment of the log)"),
        (28, 32, "reserved"),
        (32, 40, f"created_unix_ns = {CREATED_UNIX_NS} (2026-01-01T00:00:00Z)"),
        (40, 44, "reserved"),
        (44, 48, f"header_crc = {int.from_bytes(data[44:48], 'little'):#010x}"),
    )
    lines += [_hexline(data, s, e, n) for s, e, n in fields]
    off = SEGMENT_HEADER_SIZE
    while off < len(data):
        crc, prev, length, seq, pos, rtype, _flags, _rsv = RECORD_HEADER.unpack_from(data, off)
        end = off + RECORD_HEADER_SIZE + length
        lines += [
            "",
            f"record seq {seq} (offset {off}, {RECORD_HEADER_SIZE + length} bytes):",
            _hexline(data, off, off + 4, f"crc = {crc:#010x} over bytes {off + 4}..{end - 1}"),
            _hexline(data, off + 4, off + 8, f"prev_crc = {prev:#010x}"),
            _hexline(data, off + 8, off + 12, f"length = {length}"),
            _hexline(data, off + 12, off + 20, f"seq = {seq}"),
            _hexline(data, off + 20, off + 24, f"batch_pos = {pos}"),
            _hexline(data, off + 24, off + 25, f"type = {rtype} ({RecordType(rtype).name})"),
            _hexline(data, off + 25, off + 26, "flags = 0"),
            _hexline(data, off + 26, off + 28, "reserved = 0"),
            _hexline(data, off + 28, end, f"payload {data[off + 28 : end]!r}"),
        ]
        off = end
    _, head = build_segments()
    lines += ["", f"chain head of the whole golden log (seq 1..5): {head:#010x}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--explain", action="store_true", help="print the annotated hex dump")
    args = parser.parse_args(argv)
    if args.explain:
        print(explain())
    else:
        write_golden()
        print(f"wrote {GOLDEN_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
