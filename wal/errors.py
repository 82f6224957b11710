"""Errors raised by the WAL. Every message starts with ``wal:`` and names the file and offset."""

from __future__ import annotations


class WalError(Exception):
    """Base class for every error the WAL raises."""


class CorruptionError(WalError):
    """The log is damaged somewhere other than a torn tail: refuse to open it.

    A torn tail (the unsynced end of the last segment) is repaired; anything else means
    acknowledged data may be gone, so a human must look.
    """

    def __init__(self, path: str, offset: int, reason: str) -> None:
        self.path = path
        self.offset = offset
        self.reason = reason
        super().__init__(f"wal: corruption in {path} at offset {offset}: {reason}")


class LockedError(WalError):
    """Another process owns the data directory."""

    def __init__(self, directory: str, holder_pid: int | None) -> None:
        self.directory = directory
        self.holder_pid = holder_pid
        holder = f"pid {holder_pid}" if holder_pid is not None else "an unknown process"
        super().__init__(
            f"wal: data directory {directory} is locked by {holder}; "
            "only one process may own a data directory"
        )


class WriterFailedError(WalError):
    """The writer saw a write or sync error and is failed for good (fail-stop).

    After a failed fsync the kernel may have dropped the dirty pages, so retrying could report
    data as durable that is not (PostgreSQL's "fsyncgate"). Nothing is ever retried on that file.
    """


class DiskFullError(WriterFailedError):
    """The disk ran out of space (ENOSPC) during a write or segment creation."""


class RecordTooLargeError(WalError):
    """A payload exceeds the configured maximum record size. Nothing was written."""


class ReadOnlyError(WalError):
    """A write was attempted on a WAL opened read-only."""
