"""The WAL as one object: lock, recovery, writer and reader over a data directory."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from wal.errors import ReadOnlyError, WriterFailedError
from wal.fileio import OS_FILES, FileLayer
from wal.format import Record, RecordType
from wal.lock import DirectoryLock
from wal.reader import SegmentReader
from wal.recovery import RecoveryReport, recover
from wal.replica import check_continuation
from wal.scan import SegmentScan
from wal.writer import SegmentWriter, StagedBatch, WalOptions


@dataclass(frozen=True, slots=True)
class SegmentInfo:
    path: str
    first_seq: int
    last_seq: int
    record_count: int
    bytes: int


class Wal:
    """A segmented, CRC-chained write-ahead log.

    ``append`` is synchronous and returns after the batch is durable; call it from one thread
    at a time (the service uses a dedicated writer thread). Reads may run on another thread:
    they only see records whose batch was synced.
    """

    def __init__(
        self,
        directory: str,
        options: WalOptions,
        fs: FileLayer,
        readonly: bool,
        recovery: RecoveryReport,
        lock: DirectoryLock | None,
    ) -> None:
        self.directory = directory
        self.options = options
        self.fs = fs
        self.readonly = readonly
        self.recovery = recovery
        self._lock = lock
        self._segments: list[SegmentScan] = recovery.scan.segments
        self._reader = SegmentReader(fs, self._segments, options.max_record_size)
        self._writer: SegmentWriter | None = None
        self._last_seq = recovery.scan.last_seq
        self._chain_head = recovery.scan.chain_head
        self._closed = False

    @classmethod
    def open(
        cls,
        directory: str,
        options: WalOptions | None = None,
        *,
        fs: FileLayer = OS_FILES,
        readonly: bool = False,
    ) -> Wal:
        """Open (creating if needed) and recover the log in ``directory``.

        A writable open takes the directory lock, refuses corruption (:class:`CorruptionError`)
        and repairs a torn tail. A read-only open takes no lock and changes nothing.
        """
        opts = options or WalOptions()
        directory = os.path.abspath(directory)
        lock = None
        if not readonly:
            if not fs.exists(directory):
                fs.makedirs(directory)
                # A new directory's own name is durable only once its parent is synced.
                fs.fsync_dir(os.path.dirname(directory))
            lock = DirectoryLock(directory)
            lock.acquire()
        try:
            report = recover(
                directory,
                fs,
                max_record_size=opts.max_record_size,
                index_interval=opts.index_interval,
                repair=not readonly,
            )
            wal = cls(directory, opts, fs, readonly, report, lock)
            if not readonly:
                scan = report.scan
                wal._writer = SegmentWriter(
                    directory,
                    fs,
                    opts,
                    scan.segments[-1] if scan.segments else None,
                    next_seq=scan.last_seq + 1 if scan.segments else 1,
                    chain_head=scan.chain_head,
                    on_segment=wal._segments.append,
                )
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        return wal

    # -- state --------------------------------------------------------------------------------

    @property
    def first_seq(self) -> int:
        """Seq of the first retained record (1 for a new log)."""
        return self._segments[0].first_seq if self._segments else 1

    @property
    def last_seq(self) -> int:
        """Seq of the last durable record (0 for an empty log)."""
        return self._last_seq

    @property
    def chain_head(self) -> int:
        """CRC of the last durable record: identifies the whole log up to ``last_seq``."""
        return self._chain_head

    @property
    def failed(self) -> BaseException | None:
        return self._writer.failed if self._writer is not None else None

    def segments(self) -> list[SegmentInfo]:
        return [
            SegmentInfo(s.path, s.first_seq, s.last_seq, s.record_count, s.valid_end)
            for s in list(self._segments)
        ]

    # -- writing ------------------------------------------------------------------------------

    def append(self, payloads: Sequence[bytes], record_type: int = RecordType.ENTRY) -> int:
        """Append ``payloads`` as one durable batch; return the seq of the first one."""
        writer = self._live_writer()
        return self._written(writer, writer.append(payloads, record_type))

    def stage_append(
        self, payloads: Sequence[bytes], record_type: int = RecordType.ENTRY
    ) -> StagedBatch | None:
        """Write ``payloads`` without syncing them, for a caller that syncs the returned
        descriptor itself and then calls :meth:`complete_append`; None: use :meth:`append`
        (see ``SegmentWriter.stage``)."""
        return self._live_writer().stage(payloads, record_type)

    def complete_append(self, staged: StagedBatch, error: OSError | None = None) -> int:
        """Publish a staged batch after its sync returned, or fail the writer for good if the
        sync failed (``error``); returns the seq of its first record."""
        writer = self._live_writer()
        return self._written(writer, writer.complete_staged(staged, error))

    def sync_and_complete_append(self, staged: StagedBatch) -> int:
        """Sync a staged batch here (the caller's own sync could not start), then complete
        it as :meth:`complete_append` does."""
        writer = self._live_writer()
        return self._written(writer, writer.sync_staged(staged))

    def _written(self, writer: SegmentWriter, first: int) -> int:
        """After a durable batch: the log's head and last seq follow the writer's."""
        self._chain_head = writer.chain_head
        self._last_seq = writer.next_seq - 1
        return first

    def _live_writer(self) -> SegmentWriter:
        writer = self._writer
        if writer is None:
            if self.readonly:
                raise ReadOnlyError(f"wal: {self.directory} is open read-only")
            raise WriterFailedError(f"wal: {self.directory} is closed")
        return writer

    def append_raw(self, records: Sequence[bytes]) -> int:
        """Append another log's records verbatim (replication) as one durable batch.

        Each record is checked (CRC, seq, link to this log's chain head) before anything is
        written; the first misfit raises :class:`wal.replica.DivergenceError` naming its seq.
        ``records`` must not span two of the source's batches (see wal/replica.py).
        """
        writer = self._live_writer()
        batch = check_continuation(
            records, writer.next_seq, writer.chain_head, self.options.max_record_size
        )
        first = writer.append_encoded(batch.data, batch.first_seq, batch.last_crc, batch.lengths)
        return self._written(writer, first)

    # -- reading ------------------------------------------------------------------------------

    def read_raw(self, from_seq: int, to_seq: int | None = None) -> Iterator[bytes]:
        """Validated records as their exact bytes (header + payload), for replication."""
        return self._reader.iter_raw_from(max(from_seq, 1), to_seq)

    def read(self, from_seq: int, to_seq: int | None = None) -> Iterator[Record]:
        """Validated records from ``from_seq`` up to ``to_seq`` (default: the durable end)."""
        return self._reader.iter_from(max(from_seq, 1), to_seq)

    def get(self, seq: int) -> Record | None:
        """The record with ``seq``, or None if it is beyond the durable end.

        Below the first retained seq: ``SeqOutOfRangeError``.
        """
        if seq < 1 or seq > self._last_seq:
            return None
        return next(iter(self._reader.iter_from(seq, seq)), None)

    # -- retention ----------------------------------------------------------------------------

    def detach_segments_before(self, seq: int) -> list[str]:
        """Drop from the index every segment whose records all lie below ``seq``; return paths.

        Never the last (active) segment. Only memory changes: call it where the reads run (the
        service: on its event loop thread, where every read completes without yielding), then
        :meth:`remove_segments` anywhere. A crash in between leaves the files, which is safe.
        """
        if self.readonly:
            raise ReadOnlyError(f"wal: {self.directory} is open read-only")
        segs = self._segments
        n = 0
        while n < len(segs) - 1 and segs[n].last_seq < seq:
            n += 1
        if n == 0:
            return []
        paths = [s.path for s in segs[:n]]
        del segs[:n]  # in place: the writer thread appends new segments to this same list
        for path in paths:
            self._reader.forget(path)
        return paths

    def remove_segments(self, paths: Sequence[str]) -> None:
        """Unlink detached segments, then fsync the directory so the deletion is durable."""
        for path in paths:
            self.fs.unlink(path)
        if paths:
            self.fs.fsync_dir(self.directory)

    def delete_segments_before(self, seq: int) -> list[str]:
        """Delete every whole segment below ``seq`` (never the active one); return their paths.

        A read below the new :attr:`first_seq` then raises ``SeqOutOfRangeError``.
        """
        paths = self.detach_segments_before(seq)
        self.remove_segments(paths)
        return paths

    # -- lifecycle ----------------------------------------------------------------------------

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
            self._reader.close()
        finally:
            if self._lock is not None:
                self._lock.release()
                self._lock = None

    def __enter__(self) -> Wal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
