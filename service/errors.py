"""Exceptions mirroring the protocol error codes; shared by the client and the in-process API."""

from __future__ import annotations

from service.protocol import ErrorCode


class AckwalError(Exception):
    """An error reply from ackwal (or the same condition raised in-process)."""

    code: str = ErrorCode.INTERNAL

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class BadRequestError(AckwalError):
    code = ErrorCode.BAD_REQUEST


class BadFrameError(AckwalError):
    code = ErrorCode.BAD_FRAME


class FrameTooLargeError(AckwalError):
    code = ErrorCode.FRAME_TOO_LARGE


class UnknownOpError(AckwalError):
    code = ErrorCode.UNKNOWN_OP


class UnsupportedVersionError(AckwalError):
    code = ErrorCode.UNSUPPORTED_VERSION


class EntryTooLargeError(AckwalError):
    code = ErrorCode.ENTRY_TOO_LARGE


class HaltedError(AckwalError):
    """The journal failed stop after a disk error. The outcome of in-flight appends is unknown
    until the service restarts; retrying them then with the same request id is safe."""

    code = ErrorCode.HALTED


class BusyError(AckwalError):
    code = ErrorCode.BUSY


class ForbiddenError(AckwalError):
    """The server refused this peer (its uid is not in ``allowed_uids``)."""

    code = ErrorCode.FORBIDDEN


class ShuttingDownError(AckwalError):
    code = ErrorCode.SHUTTING_DOWN


class OutOfRangeError(AckwalError):
    code = ErrorCode.OUT_OF_RANGE


class UnknownJournalError(AckwalError):
    code = ErrorCode.UNKNOWN_JOURNAL


class JournalFullError(AckwalError):
    """``max_journal_bytes`` is reached and retention cannot free space: nothing is wrong with
    the disk. Appends resume once space is freed (a snapshot, a cursor moved, a higher limit)."""

    code = ErrorCode.JOURNAL_FULL


class ReadOnlyError(AckwalError):
    """The service was started with ``--read-only``: it serves reads, never writes."""

    code = ErrorCode.READ_ONLY


class FencedError(AckwalError):
    """A newer primary (a higher replication epoch) exists: this service accepts no appends.
    Send appends to the current primary (docs/REPLICATION.md)."""

    code = ErrorCode.FENCED


_BY_CODE: dict[str, type[AckwalError]] = {
    cls.code: cls
    for cls in (
        BadRequestError,
        BadFrameError,
        FrameTooLargeError,
        UnknownOpError,
        UnsupportedVersionError,
        EntryTooLargeError,
        HaltedError,
        BusyError,
        ForbiddenError,
        ShuttingDownError,
        OutOfRangeError,
        UnknownJournalError,
        JournalFullError,
        ReadOnlyError,
        FencedError,
    )
}


def error_from_code(code: str, message: str) -> AckwalError:
    """The typed exception for an error reply; unknown codes give a plain AckwalError."""
    cls = _BY_CODE.get(code)
    return cls(message) if cls is not None else AckwalError(message, code)
