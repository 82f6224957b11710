"""Reading validated records by seq through the sparse in-memory index.

Each segment keeps sparse marks (seq -> offset) collected by the scan at open and by the writer;
a read bisects to the segment, bisects to the nearest mark, and parses forward. Only bytes up to
a segment's ``valid_end`` (what was synced) are ever read, so readers never see a half-written
batch. Every record read is checked again (CRC, seq and chain link).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from typing import Any

from wal.errors import CorruptionError, WalError
from wal.fileio import FileLayer, ReadHandle
from wal.format import RECORD_HEADER, RECORD_HEADER_SIZE, Record, check_record
from wal.scan import SegmentScan

READ_CHUNK = 256 * 1024
SMALL_READ_CHUNK = 32 * 1024


class SeqOutOfRangeError(WalError):
    """The requested seq is below the first retained record."""

    def __init__(self, seq: int, first_available: int) -> None:
        self.seq = seq
        self.first_available = first_available
        super().__init__(
            f"wal: seq {seq} is no longer retained; the first available seq is {first_available}"
        )


class SegmentReader:
    """Reads records from a list of segments that the writer keeps extending."""

    def __init__(self, fs: FileLayer, segments: list[SegmentScan], max_record_size: int) -> None:
        self.fs = fs
        self.segments = segments
        self.max_record_size = max_record_size
        self._handles: dict[str, ReadHandle] = {}

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()

    def forget(self, path: str) -> None:
        """Drop the cached handle of a deleted segment."""
        handle = self._handles.pop(path, None)
        if handle is not None:
            handle.close()

    def _handle(self, path: str) -> ReadHandle:
        handle = self._handles.get(path)
        if handle is None:
            handle = self.fs.open_read(path)
            self._handles[path] = handle
        return handle

    def iter_from(self, from_seq: int, to_seq: int | None = None) -> Iterator[Record]:
        """Records with ``from_seq <= seq <= to_seq`` (to the durable end when None), in order."""
        return self._iter(from_seq, to_seq, raw=False)

    def iter_raw_from(self, from_seq: int, to_seq: int | None = None) -> Iterator[bytes]:
        """The same records as their exact bytes (28-byte header + payload), for replication."""
        return self._iter(from_seq, to_seq, raw=True)

    def _iter(self, from_seq: int, to_seq: int | None, raw: bool) -> Iterator[Any]:
        segments = self.segments
        if not segments:
            return
        first = segments[0].first_seq
        if from_seq < first:
            raise SeqOutOfRangeError(from_seq, first)
        idx = bisect.bisect_right([s.first_seq for s in segments], from_seq) - 1
        seq = from_seq
        while idx < len(segments):
            seg = segments[idx]
            last = seg.last_seq if to_seq is None else min(seg.last_seq, to_seq)
            if seq <= last:
                yield from self._iter_segment(seg, seq, last, raw)
                seq = last + 1
            if to_seq is not None and seq > to_seq:
                return
            idx += 1

    def _iter_segment(
        self, seg: SegmentScan, from_seq: int, to_seq: int, raw: bool = False
    ) -> Iterator[Any]:
        end = seg.valid_end  # snapshot: only synced bytes
        i = bisect.bisect_right(seg.marks_seq, from_seq) - 1
        if i >= 0:
            seq, off = seg.marks_seq[i], seg.marks_off[i]
        else:
            raise CorruptionError(seg.path, 0, f"no index mark at or below seq {from_seq}")
        prev_crc: int | None = None
        handle = self._handle(seg.path)
        # A short range (one record: a duplicate's response, a lookup) sits within an index
        # interval of its mark: read little. Long scans read big chunks.
        chunk = SMALL_READ_CHUNK if to_seq - from_seq < 16 else READ_CHUNK
        buf = b""
        buf_off = off
        unpack = RECORD_HEADER.unpack_from
        while seq < from_seq:
            # Records before the wanted one are only stepped over (they were validated when
            # written or recovered): their headers are read, their CRCs are not computed.
            rel = off - buf_off
            if len(buf) - rel < RECORD_HEADER_SIZE:
                buf = handle.pread(min(chunk, end - off), off)
                buf_off = off
                rel = 0
                if len(buf) < RECORD_HEADER_SIZE:
                    raise CorruptionError(seg.path, off, f"unexpected end of data before seq {seq}")
            _crc, _prev, length, found, _pos, _type, _fl, _rs = unpack(buf, rel)
            if found != seq or length > self.max_record_size:
                raise CorruptionError(seg.path, off, f"expected seq {seq} here, found {found}")
            off += RECORD_HEADER_SIZE + length
            seq += 1
        while seq <= to_seq:
            rel = off - buf_off
            avail = len(buf) - rel
            need = RECORD_HEADER_SIZE
            if avail >= RECORD_HEADER_SIZE:
                need += min(_peek_length(buf, rel), self.max_record_size)
            if avail < need:
                buf = handle.pread(min(max(chunk, need), end - off), off)
                buf_off = off
                rel = 0
                if len(buf) >= RECORD_HEADER_SIZE:
                    need = RECORD_HEADER_SIZE + min(_peek_length(buf, 0), self.max_record_size)
                    if len(buf) < need:  # a record larger than the chunk: read all of it
                        buf = handle.pread(min(need, end - off), off)
            rec = check_record(buf, rel, self.max_record_size)
            if isinstance(rec, str):
                raise CorruptionError(seg.path, off, f"while reading seq {seq}: {rec}")
            if rec.seq != seq:
                raise CorruptionError(seg.path, off, f"expected seq {seq} here, found {rec.seq}")
            if prev_crc is not None and rec.prev_crc != prev_crc:
                raise CorruptionError(
                    seg.path,
                    off,
                    f"chain break at seq {seq}: record links to {rec.prev_crc:#010x}, "
                    f"previous record is {prev_crc:#010x}",
                )
            if seq >= from_seq:
                start = rel + RECORD_HEADER_SIZE
                if raw:
                    yield buf[rel : start + rec.length]
                else:
                    yield Record(seq, rec.type, buf[start : start + rec.length], rec.crc)
            prev_crc = rec.crc
            off += RECORD_HEADER_SIZE + rec.length
            seq += 1


def _peek_length(buf: bytes, rel: int) -> int:
    return int.from_bytes(buf[rel + 8 : rel + 12], "little")
