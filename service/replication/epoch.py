"""The replication epoch: which primary a record was written under (fencing).

Epoch 1 is the first primary; ``ackwal promote`` writes an EPOCH record with the next epoch into
the promoted standby's WAL, and every published record carries its writer's epoch. A node knows
its epoch from ``epoch.acke`` in the journal's directory (replaced atomically: temp file, fsync,
rename, directory fsync), written right after an EPOCH record became durable. The EPOCH record
comes first, so a crash in between leaves the record at the end of the log and no file update:
:func:`current_epoch` therefore also looks at the EPOCH records of the last segment.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

import msgpack

from service.runs import decode_run_payload
from wal import RecordType, Wal, WalError
from wal.crc import crc32c
from wal.fileio import OS_FILES, FileLayer

EPOCH_FILE = "epoch.acke"
_MAGIC = b"ACKWALEP"
FIRST_EPOCH = 1


class EpochFileError(WalError):
    """``epoch.acke`` is damaged: the start is refused, as for a corrupt log (a WalError, so
    ``ackwal serve`` says so in one line), rather than guessing the epoch."""


def epoch_payload(epoch: int, previous_last_seq: int) -> bytes:
    """The payload of an EPOCH record (a msgpack map; readers ignore unknown keys)."""
    data: bytes = msgpack.packb(
        {
            "v": 1,
            "epoch": epoch,
            "previous_last_seq": previous_last_seq,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "time_ms": time.time_ns() // 1_000_000,
        },
        use_bin_type=True,
    )
    return data


def decode_epoch_payload(payload: bytes) -> dict[str, Any]:
    """The map of an EPOCH payload ({} if it is not a map): the same shape as a run record's."""
    return decode_run_payload(payload)


def epoch_of_record(payload: bytes) -> int:
    epoch = decode_epoch_payload(payload).get("epoch")
    return epoch if isinstance(epoch, int) and epoch >= FIRST_EPOCH else FIRST_EPOCH


def read_epoch_file(directory: str, fs: FileLayer = OS_FILES) -> int:
    path = os.path.join(directory, EPOCH_FILE)
    if not fs.exists(path):
        return FIRST_EPOCH
    data = fs.read_file(path)
    if len(data) < 16 or data[:8] != _MAGIC:
        raise EpochFileError(f"{path}: not an epoch file (bad magic or too short)")
    crc = int.from_bytes(data[8:12], "little")
    length = int.from_bytes(data[12:16], "little")
    body = data[16 : 16 + length]
    if len(body) != length or crc32c(body) != crc:
        raise EpochFileError(f"{path}: checksum mismatch; restore it or re-run ackwal promote")
    epoch = decode_epoch_payload(body).get("epoch")
    if not isinstance(epoch, int) or epoch < FIRST_EPOCH:
        raise EpochFileError(f"{path}: no valid epoch in it")
    return epoch


def write_epoch_file(directory: str, epoch: int, seq: int, fs: FileLayer = OS_FILES) -> None:
    """Replace ``epoch.acke`` atomically and durably (blocking: call off the event loop)."""
    path = os.path.join(directory, EPOCH_FILE)
    tmp = path + ".tmp"
    body: bytes = msgpack.packb({"v": 1, "epoch": epoch, "seq": seq}, use_bin_type=True)
    data = _MAGIC + crc32c(body).to_bytes(4, "little") + len(body).to_bytes(4, "little") + body
    if fs.exists(tmp):
        fs.unlink(tmp)
    handle = fs.open_write(tmp, create=True)
    try:
        handle.pwrite(data, 0)
        handle.fsync()
    finally:
        handle.close()
    fs.rename(tmp, path)
    fs.fsync_dir(directory)


def current_epoch(wal: Wal) -> int:
    """This log's epoch: the file's, or a newer EPOCH record of the last segment (blocking)."""
    epoch = read_epoch_file(wal.directory, wal.fs)
    segments = wal.segments()
    if segments and segments[-1].record_count:
        last = segments[-1]
        for rec in wal.read(max(last.first_seq, wal.first_seq), last.last_seq):
            if rec.type == RecordType.EPOCH:
                epoch = max(epoch, epoch_of_record(rec.payload))
    return epoch
