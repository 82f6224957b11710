"""Byte surgery on real WAL files, in the manner of LevelDB's log_test helpers.

Tests build a real log with :func:`build_log`, damage its files with the helpers below and
reopen it. Payloads are derived from the seq (:func:`payload_for`) so any record read back can
be checked without keeping the originals around.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from wal import Wal, WalOptions
from wal.format import (
    DEFAULT_MAX_RECORD_SIZE,
    SEGMENT_HEADER_SIZE,
    RecordView,
    check_record,
    parse_segment_name,
)

# No preallocation and no rotation unless a test asks for them: the files hold exactly the records.
PLAIN = WalOptions(preallocate=False)


def payload_for(seq: int, size: int | None = None) -> bytes:
    """A payload only ``seq`` has; it holds no zero byte, so no record ends in zeros."""
    n = 5 + seq % 13 if size is None else size
    digest = hashlib.blake2b(seq.to_bytes(8, "little"), digest_size=32).digest()
    body = (digest * (n // 32 + 1))[:n]
    return body.replace(b"\0", b"\x01")


@dataclass(frozen=True)
class Placed:
    """Where one record lives: its file, byte range, seq and batch."""

    path: Path
    offset: int
    end: int
    seq: int
    batch_first: int


def build_log(directory: Path, batch_sizes: Sequence[int], options: WalOptions = PLAIN) -> int:
    """Append batches of ``payload_for`` payloads; return the last seq."""
    with Wal.open(str(directory), options) as wal:
        for n in batch_sizes:
            first = wal.last_seq + 1
            wal.append([payload_for(s) for s in range(first, first + n)])
        return wal.last_seq


def segment_paths(directory: Path) -> list[Path]:
    found = sorted(
        (first, directory / name)
        for name in os.listdir(directory)
        if (first := parse_segment_name(name)) is not None
    )
    return [path for _, path in found]


def records_in(path: Path) -> list[Placed]:
    """Every record of an undamaged segment file, located."""
    data = path.read_bytes()
    out: list[Placed] = []
    off = SEGMENT_HEADER_SIZE
    while off < len(data):
        rec = check_record(data, off, DEFAULT_MAX_RECORD_SIZE)
        if not isinstance(rec, RecordView):
            break
        out.append(Placed(path, rec.offset, rec.end, rec.seq, rec.seq - rec.batch_pos))
        off = rec.end
    return out


def all_records(directory: Path) -> list[Placed]:
    return [rec for path in segment_paths(directory) for rec in records_in(path)]


def flip_bit(path: Path, bit: int) -> None:
    data = bytearray(path.read_bytes())
    data[bit // 8] ^= 1 << (bit % 8)
    path.write_bytes(bytes(data))


def overwrite(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def zero_range(path: Path, start: int, end: int) -> None:
    overwrite(path, start, bytes(end - start))


def append_bytes(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def truncate(path: Path, size: int) -> None:
    os.truncate(path, size)


def snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    """Name -> (contents, mtime_ns) of every file: proof that nothing was touched."""
    out = {}
    for name in sorted(os.listdir(directory)):
        path = directory / name
        out[name] = (path.read_bytes(), path.stat().st_mtime_ns)
    return out


def read_all(directory: Path, options: WalOptions = PLAIN) -> list[tuple[int, bytes]]:
    """Open (writable, so recovery repairs) and return every (seq, payload) read back."""
    with Wal.open(str(directory), options) as wal:
        return [(r.seq, r.payload) for r in wal.read(1)]


def assert_intact_prefix(records: Sequence[tuple[int, bytes]], last_seq: int) -> None:
    """Records are exactly seqs 1..last_seq with their original payloads."""
    assert [seq for seq, _ in records] == list(range(1, last_seq + 1))
    for seq, payload in records:
        assert payload == payload_for(seq), f"seq {seq} came back altered"
