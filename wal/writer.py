"""The appending side of the WAL: group writes, syncs, segment rotation and preallocation.

One ``append`` = one ``pwrite`` of the whole encoded batch + one fdatasync. Any ``OSError`` from a
write, a sync or a segment creation fails the writer for good (fail-stop): after a failed fsync
the kernel may already have thrown the dirty pages away, so retrying could report lost data as
durable. Every later call raises :class:`WriterFailedError`.

A caller that can sync without blocking (Linux AIO from an event loop, service/journal.py) may
split an append in two: ``stage`` writes the batch, the caller syncs the descriptor it names,
``complete_staged`` publishes the batch or, if that sync failed, fails the writer the same way.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import structlog

from wal.errors import DiskFullError, RecordTooLargeError, WriterFailedError
from wal.fileio import Buffer, FileLayer, OsWriteHandle, WriteHandle
from wal.format import (
    DEFAULT_MAX_RECORD_SIZE,
    RECORD_HEADER_SIZE,
    SEGMENT_HEADER_SIZE,
    RecordType,
    encode_records,
    encode_segment_header,
    segment_name,
)
from wal.scan import DEFAULT_INDEX_INTERVAL, SegmentScan

log = structlog.get_logger("wal")

SyncMode = Literal["fdatasync", "fsync", "none"]
SPARE_NAME = "spare.wal.tmp"
# The spare's zeros go to disk 1 MiB at a time (fdatasync after each piece), not as one 64 MiB
# writeback at the end: the active segment's fdatasync, on the same disk meanwhile, then queues
# behind at most one piece. Default segments, 64 clients, two ABBA rounds: syncs over 10 ms
# 1 and 4 against 6 and 12, p99.9 10.5-10.6 against 12.7-14.2 ms (docs/PERFORMANCE.md).
SPARE_SYNC_BYTES = 1 << 20
TMP_SUFFIX = ".tmp"
_ZERO_CHUNK = bytes(1024 * 1024)


@dataclass(frozen=True, slots=True)
class WalOptions:
    """Tunables of one WAL. The defaults are the production settings."""

    segment_size: int = 64 * 1024 * 1024
    max_record_size: int = DEFAULT_MAX_RECORD_SIZE
    sync_mode: SyncMode = "fdatasync"
    # Overwriting zero-filled space syncs ~1.6x faster than appending to a growing file on ext4:
    # fdatasync then has no file size to flush (figures in docs/FORMAT.md).
    preallocate: bool = True
    index_interval: int = DEFAULT_INDEX_INTERVAL

    def __post_init__(self) -> None:
        if self.sync_mode not in ("fdatasync", "fsync", "none"):
            raise ValueError(f"sync_mode must be fdatasync, fsync or none, not {self.sync_mode!r}")
        if self.segment_size < SEGMENT_HEADER_SIZE + RECORD_HEADER_SIZE:
            raise ValueError(f"segment_size {self.segment_size} is too small")
        if not 0 < self.max_record_size <= 0xFFFFFFFF:
            raise ValueError(f"max_record_size {self.max_record_size} is out of range")
        if self.index_interval < 1:
            raise ValueError("index_interval must be positive")


def write_all(handle: WriteHandle, data: Buffer, offset: int) -> None:
    """pwrite until every byte is written; a zero-length write is an I/O error."""
    view = memoryview(data)
    done = 0
    total = len(view)
    while done < total:
        n = handle.pwrite(view[done:], offset + done)
        if n <= 0:
            raise OSError(errno.EIO, f"write to {handle.path} made no progress")
        done += n


def zero_fill(handle: WriteHandle, start: int, end: int) -> None:
    """Write zeros over [start, end) so later overwrites need no size change at sync time."""
    pos = start
    while pos < end:
        n = min(len(_ZERO_CHUNK), end - pos)
        write_all(handle, memoryview(_ZERO_CHUNK)[:n], pos)
        pos += n


@dataclass(frozen=True, slots=True)
class StagedBatch:
    """A batch written to the active segment but not synced yet (:meth:`SegmentWriter.stage`)."""

    fd: int  # the descriptor to sync
    datasync: bool  # fdatasync (True) or fsync (False), as sync_mode says
    first: int
    last_crc: int
    lengths: list[int]  # payload lengths
    nbytes: int  # bytes written


class SegmentWriter:
    """Appends batches to the active segment and cuts new ones. Not thread-safe: one caller."""

    def __init__(
        self,
        directory: str,
        fs: FileLayer,
        options: WalOptions,
        active: SegmentScan | None,
        next_seq: int,
        chain_head: int,
        on_segment: Callable[[SegmentScan], None],
    ) -> None:
        self.directory = directory
        self.fs = fs
        self.options = options
        self.next_seq = next_seq
        self.chain_head = chain_head
        self._on_segment = on_segment
        self._failed: BaseException | None = None
        self._staged: StagedBatch | None = None
        self._handle: WriteHandle | None = None
        self._active: SegmentScan | None = None
        self._offset = 0
        self._spare_thread: threading.Thread | None = None
        self._spare_ready = False
        self._sync: Callable[[], None] = self._no_sync
        try:
            if active is not None:
                self._handle = fs.open_write(active.path, create=False)
                self._active = active
                self._offset = active.valid_end
                if options.preallocate:
                    size = self._handle.size()
                    if size < options.segment_size:
                        zero_fill(self._handle, size, options.segment_size)
                        self._handle.fsync()
            else:
                # A new log gets its first segment now, so the first append (and its ACK)
                # does not wait for a segment to be created and zero-filled.
                self._rotate(next_seq)
            self._set_sync()
        except OSError as exc:
            err = self._fail(exc, "opening the active segment")
            self.close()  # the caller never gets this writer, so nobody else would close it
            raise err from exc
        if options.preallocate:
            self._start_spare()

    # -- public -------------------------------------------------------------------------------

    @property
    def failed(self) -> BaseException | None:
        """The error that failed this writer, or None while it is healthy."""
        return self._failed

    def append(self, payloads: Sequence[bytes], record_type: int = RecordType.ENTRY) -> int:
        """Write ``payloads`` as one batch, sync, and return the first seq assigned.

        Returns only after the sync returned; raises without side effects for a bad argument and
        fails the writer for good on any I/O error.
        """
        self._check_payloads(payloads)
        first = self.next_seq
        buf, crc = encode_records(payloads, first, self.chain_head, record_type)
        return self._write_batch(buf, first, crc, list(map(len, payloads)), "appending a batch")

    def stage(
        self, payloads: Sequence[bytes], record_type: int = RecordType.ENTRY
    ) -> StagedBatch | None:
        """Write ``payloads`` as one batch without syncing it; the caller syncs
        ``StagedBatch.fd`` and then must call :meth:`complete_staged`, before anything else.

        None, with nothing written, when the batch needs a new segment first, the file is not
        an OS file (a fault-injecting layer) or nothing is synced (sync_mode none): use
        :meth:`append`. Readers see nothing of a staged batch until it is completed. A failed
        write fails the writer for good, as in append.
        """
        self._check_payloads(payloads)
        handle = self._handle
        if self.options.sync_mode == "none" or not isinstance(handle, OsWriteHandle):
            return None
        first = self.next_seq
        buf, crc = encode_records(payloads, first, self.chain_head, record_type)
        if self._active is None or (
            self._offset > SEGMENT_HEADER_SIZE
            and self._offset + len(buf) > self.options.segment_size
        ):
            return None
        try:
            write_all(handle, buf, self._offset)
        except OSError as exc:
            raise self._fail(exc, "appending a batch") from exc
        staged = StagedBatch(
            handle.fd,
            self.options.sync_mode == "fdatasync",
            first,
            crc,
            [len(p) for p in payloads],
            len(buf),
        )
        self._staged = staged
        return staged

    def complete_staged(self, staged: StagedBatch, error: OSError | None = None) -> int:
        """Publish ``staged`` once the caller's sync of its descriptor returned, and return its
        first seq; if that sync failed (``error``), fail the writer for good and raise."""
        if self._staged is not staged:
            raise RuntimeError("complete_staged: not the batch this writer staged")
        self._staged = None
        if error is not None:
            raise self._fail(error, "syncing a batch") from error
        return self._publish(staged.nbytes, staged.first, staged.last_crc, staged.lengths)

    def sync_staged(self, staged: StagedBatch) -> int:
        """Sync ``staged`` here, as ``append`` would have (for a caller whose own sync could
        not be started), then complete it the same way."""
        try:
            self._sync()
        except OSError as exc:
            return self.complete_staged(staged, exc)  # raises: fail-stop
        return self.complete_staged(staged)

    def _check_writable(self) -> None:
        if self._staged is not None:
            raise RuntimeError("a staged batch must be completed before the next write")
        if self._failed is not None:
            raise WriterFailedError(
                f"wal: writer failed earlier and accepts nothing: {self._failed}"
            )

    def _check_payloads(self, payloads: Sequence[bytes]) -> None:
        self._check_writable()
        if not payloads:
            raise ValueError("append needs at least one payload")
        max_size = self.options.max_record_size
        for payload in payloads:
            if len(payload) > max_size:
                raise RecordTooLargeError(
                    f"wal: record of {len(payload)} bytes exceeds the maximum {max_size}"
                )

    def append_encoded(self, buf: bytes, first: int, last_crc: int, lengths: list[int]) -> int:
        """Write records that are already encoded (wal/replica.py checked that they continue
        this log at ``next_seq``) as one batch and sync; the same fail-stop rules as append."""
        self._check_writable()
        if first != self.next_seq:
            raise ValueError(f"append_encoded: first seq {first} is not {self.next_seq}")
        return self._write_batch(buf, first, last_crc, lengths, "appending replicated records")

    def _write_batch(
        self, buf: bytes | bytearray, first: int, last_crc: int, lengths: list[int], what: str
    ) -> int:
        """One write + one sync of consecutive encoded records (payload ``lengths``), rotating
        first if they do not fit; then index them and publish them to readers."""
        try:
            if self._active is None or (
                self._offset > SEGMENT_HEADER_SIZE
                and self._offset + len(buf) > self.options.segment_size
            ):
                self._rotate(first)
            assert self._handle is not None and self._active is not None
            write_all(self._handle, buf, self._offset)
            self._sync()
        except OSError as exc:
            raise self._fail(exc, what) from exc
        return self._publish(len(buf), first, last_crc, lengths)

    def _publish(self, nbytes: int, first: int, last_crc: int, lengths: list[int]) -> int:
        """Account a written and synced batch of ``nbytes`` at the end of the active segment."""
        seg = self._active
        assert seg is not None
        start = self._offset
        self._offset += nbytes
        self._add_marks(seg, lengths, first, start, self._offset)
        self.next_seq = first + len(lengths)
        self.chain_head = last_crc
        # Publish to readers last: valid_end/last_seq say what is durable and readable.
        seg.valid_end = self._offset
        seg.last_crc = last_crc
        seg.record_count += len(lengths)
        seg.last_seq = self.next_seq - 1
        return first

    def _add_marks(
        self, seg: SegmentScan, lengths: list[int], seq: int, off: int, end: int
    ) -> None:
        """Sparse index marks every ``index_interval`` bytes, inside large batches too: a read
        by seq (a duplicate's stored response, a lookup) then parses at most one interval.
        The records of payload ``lengths`` span ``off`` to ``end``."""
        interval = self.options.index_interval
        marks_off = seg.marks_off
        next_mark = marks_off[-1] + interval if marks_off else 0
        if end <= next_mark:
            return
        for length in lengths:
            if off >= next_mark:
                seg.marks_seq.append(seq)
                marks_off.append(off)
                next_mark = off + interval
            off += RECORD_HEADER_SIZE + length
            seq += 1

    def close(self) -> None:
        self._join_spare()
        if self._handle is not None:
            try:
                self._handle.close()
            finally:
                self._handle = None

    # -- internals ----------------------------------------------------------------------------

    def _set_sync(self) -> None:
        handle = self._handle
        if handle is None or self.options.sync_mode == "none":
            self._sync = self._no_sync
        elif self.options.sync_mode == "fsync":
            self._sync = handle.fsync
        else:
            self._sync = handle.fdatasync

    @staticmethod
    def _no_sync() -> None:
        return None

    def _fail(self, exc: OSError, doing: str) -> WriterFailedError:
        path = self._active.path if self._active is not None else self.directory
        if exc.errno == errno.ENOSPC:
            err: WriterFailedError = DiskFullError(
                f"wal: disk full (ENOSPC) while {doing} in {path}; the writer is stopped. "
                "Free space and restart: recovery keeps every acknowledged record"
            )
        else:
            err = WriterFailedError(
                f"wal: {exc.strerror or exc} (errno {exc.errno}) while {doing} in {path}; "
                "the writer is stopped for good and never retries (fail-stop)"
            )
        if self._failed is None:
            self._failed = err
            log.error("wal.writer_failed", error=str(err), errno=exc.errno, path=path)
        return err

    def _rotate(self, first_seq: int) -> None:
        """Cut a new segment: temp file, header, sync, rename, sync the directory."""
        final = os.path.join(self.directory, segment_name(first_seq))
        tmp = final + TMP_SUFFIX
        header = encode_segment_header(first_seq, self.chain_head)
        handle = self._take_spare(tmp)
        if handle is None:
            handle = self.fs.open_write(tmp, create=True)
        try:
            write_all(handle, header, 0)
            if self.options.preallocate and handle.size() < self.options.segment_size:
                zero_fill(handle, SEGMENT_HEADER_SIZE, self.options.segment_size)
            handle.fsync()
            self.fs.rename(tmp, final)
            self.fs.fsync_dir(self.directory)
        except BaseException:
            handle.close()
            raise
        handle.path = final
        if self._handle is not None:
            self._handle.close()
        self._handle = handle
        self._offset = SEGMENT_HEADER_SIZE
        self._set_sync()
        seg = SegmentScan(
            path=final,
            first_seq=first_seq,
            prev_chain=self.chain_head,
            created_unix_ns=0,
            file_size=max(handle.size(), SEGMENT_HEADER_SIZE),
            valid_end=SEGMENT_HEADER_SIZE,
            last_seq=first_seq - 1,
            last_crc=self.chain_head,
            record_count=0,
        )
        self._active = seg
        self._on_segment(seg)
        log.info("wal.segment_cut", path=final, first_seq=first_seq)
        if self.options.preallocate:
            self._start_spare()

    # Preallocation: a zero-filled spare segment is prepared by a background thread so that a
    # rotation never waits for 64 MiB of zeros to be written.

    def _start_spare(self) -> None:
        if self._spare_thread is not None:
            return
        self._spare_ready = False
        thread = threading.Thread(target=self._prepare_spare, name="wal-spare", daemon=True)
        self._spare_thread = thread
        thread.start()

    def _prepare_spare(self) -> None:
        path = os.path.join(self.directory, SPARE_NAME)
        try:
            if self.fs.exists(path):
                self.fs.unlink(path)
            handle = self.fs.open_write(path, create=True)
            try:
                size = self.options.segment_size
                for start in range(0, size, SPARE_SYNC_BYTES):
                    zero_fill(handle, start, min(start + SPARE_SYNC_BYTES, size))
                    handle.fdatasync()
                handle.fsync()
            finally:
                handle.close()
            self._spare_ready = True
        except OSError as exc:
            # Not fatal: the rotation then creates the segment itself and fails stop there if
            # the disk really is broken.
            log.warning("wal.spare_failed", path=path, error=str(exc))

    def _join_spare(self) -> None:
        thread = self._spare_thread
        if thread is not None:
            thread.join()
            self._spare_thread = None

    def _take_spare(self, tmp: str) -> WriteHandle | None:
        self._join_spare()
        if not self._spare_ready:
            return None
        self._spare_ready = False
        self.fs.rename(os.path.join(self.directory, SPARE_NAME), tmp)
        return self.fs.open_write(tmp, create=False)
