"""ackwal's write-ahead log: on-disk format, group-commit writer, reader and recovery.

Synchronous and free of service concerns, so it can be used and tested on its own.
"""

from wal.errors import (
    CorruptionError,
    DiskFullError,
    LockedError,
    ReadOnlyError,
    RecordTooLargeError,
    WalError,
    WriterFailedError,
)
from wal.format import FORMAT_VERSION, Record, RecordType
from wal.log import SegmentInfo, Wal
from wal.reader import SeqOutOfRangeError
from wal.recovery import RecoveryReport
from wal.verify import VerifyReport, verify
from wal.writer import WalOptions

__all__ = [
    "FORMAT_VERSION",
    "CorruptionError",
    "DiskFullError",
    "LockedError",
    "ReadOnlyError",
    "Record",
    "RecordTooLargeError",
    "RecordType",
    "RecoveryReport",
    "SegmentInfo",
    "SeqOutOfRangeError",
    "VerifyReport",
    "Wal",
    "WalError",
    "WalOptions",
    "WriterFailedError",
    "verify",
]
