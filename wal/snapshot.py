"""Engine snapshots on disk: atomic, CRC-checked files in ``snapshots/`` beside the segments.

A snapshot is the engine's state as of ``anchor_seq``; recovery replays the records after it.
One file per snapshot, named ``%020d.snap`` by anchor seq, holding a 32-byte header then the
blob (docs/FORMAT.md, "Snapshot files")::

    magic "AWSS" | version u16 | flags u16 | anchor_seq u64 | length u64 | blob CRC-32C u32 |
    header CRC-32C u32 (over the 28 bytes before it)          -- all little-endian

A snapshot is written as ``NAME.snap.tmp`` (blob streamed after a zeroed header, the header
written last), fsynced, renamed into place, and the directory fsynced: a power cut at any step
leaves either the old set of snapshots or the old set plus the new one, never a half file under
a final name (leftover temp files are removed when the store is opened). Every file operation
goes through a :class:`wal.fileio.FileLayer`, so the fault-injecting layer can interrupt it.
Only the newest ``keep`` snapshots are kept. This module is synchronous; the service runs it
off the event loop (service/snapshots.py).
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

import structlog

from wal.crc import crc32c
from wal.errors import WalError
from wal.fileio import OS_FILES, Buffer, FileLayer, ReadHandle, WriteHandle
from wal.writer import write_all

SNAPSHOT_MAGIC: Final = b"AWSS"
SNAPSHOT_VERSION: Final = 1
SNAPSHOT_HEADER = struct.Struct("<4sHHQQII")
SNAPSHOT_HEADER_SIZE: Final = SNAPSHOT_HEADER.size  # 32
SNAPSHOT_DIR: Final = "snapshots"
SNAPSHOT_SUFFIX: Final = ".snap"
SNAPSHOT_TMP_SUFFIX: Final = ".snap.tmp"
SNAPSHOT_NAME_RE: Final = re.compile(r"^(\d{20})\.snap$")
READ_CHUNK: Final = 1024 * 1024

log = structlog.get_logger("ackwal.wal.snapshot")


class SnapshotError(WalError):
    """A snapshot could not be stored or read."""


class SnapshotCorruptError(SnapshotError):
    """A snapshot file failed validation (bad header, length or CRC)."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"snapshot {path} is corrupt: {reason}")


@dataclass(frozen=True, slots=True)
class SnapshotHeader:
    """A validated snapshot: where it is, what it anchors and its blob's size and CRC."""

    path: str
    anchor_seq: int
    length: int
    crc: int


def snapshot_name(anchor_seq: int) -> str:
    return f"{anchor_seq:020d}{SNAPSHOT_SUFFIX}"


def encode_snapshot_header(anchor_seq: int, length: int, blob_crc: int) -> bytes:
    head = SNAPSHOT_HEADER.pack(
        SNAPSHOT_MAGIC, SNAPSHOT_VERSION, 0, anchor_seq, length, blob_crc, 0
    )
    return head[:-4] + crc32c(head[:-4]).to_bytes(4, "little")


def decode_snapshot_header(path: str, data: bytes) -> tuple[int, int, int]:
    """(anchor_seq, length, blob CRC) from a header, or :class:`SnapshotCorruptError`."""
    if len(data) < SNAPSHOT_HEADER_SIZE:
        raise SnapshotCorruptError(path, f"file is {len(data)} bytes, shorter than a header")
    magic, version, _flags, anchor, length, blob_crc, head_crc = SNAPSHOT_HEADER.unpack_from(data)
    if magic != SNAPSHOT_MAGIC:
        raise SnapshotCorruptError(path, f"bad magic {magic!r}")
    if crc32c(data[: SNAPSHOT_HEADER_SIZE - 4]) != head_crc:
        raise SnapshotCorruptError(path, "header CRC mismatch")
    if version != SNAPSHOT_VERSION:
        raise SnapshotCorruptError(path, f"unsupported snapshot version {version}")
    return anchor, length, blob_crc


class SnapshotWriter:
    """One snapshot being written to its temp file; :meth:`commit` makes it durable and visible."""

    def __init__(
        self, store: SnapshotStore, anchor_seq: int, tmp: str, handle: WriteHandle
    ) -> None:
        self.store = store
        self.anchor_seq = anchor_seq
        self.tmp = tmp
        self.length = 0
        self.crc = 0
        self._handle: WriteHandle | None = handle
        self._done = False

    def write(self, data: Buffer) -> None:
        handle = self._live()
        write_all(handle, data, SNAPSHOT_HEADER_SIZE + self.length)
        self.crc = crc32c(data, self.crc)
        self.length += len(data)

    def commit(self) -> SnapshotHeader:
        """Header, fsync, rename, directory fsync; then drop snapshots beyond ``keep``."""
        handle = self._live()
        header = encode_snapshot_header(self.anchor_seq, self.length, self.crc)
        write_all(handle, header, 0)
        handle.fsync()
        handle.close()
        self._handle = None
        store = self.store
        final = os.path.join(store.directory, snapshot_name(self.anchor_seq))
        store.fs.rename(self.tmp, final)
        store.fs.fsync_dir(store.directory)
        self._done = True
        try:
            store.prune()
        except OSError as exc:  # the new snapshot is durable already; old ones go next time
            log.warning("snapshot.prune_failed", directory=store.directory, error=str(exc))
        return SnapshotHeader(final, self.anchor_seq, self.length, self.crc)

    def abort(self) -> None:
        """Forget this snapshot: close and remove the temp file (best effort)."""
        if self._done:
            return
        self._done = True
        handle, self._handle = self._handle, None
        try:
            if handle is not None:
                handle.close()
            self.store.fs.unlink(self.tmp)
        except OSError:
            pass  # a leftover temp file is removed at the next open

    def _live(self) -> WriteHandle:
        if self._handle is None or self._done:
            raise SnapshotError(f"snapshot {self.tmp} is already committed or aborted")
        return self._handle


class SnapshotStore:
    """The ``snapshots/`` directory of a data directory."""

    def __init__(self, data_dir: str, fs: FileLayer = OS_FILES, keep: int = 3) -> None:
        if keep < 1:
            raise ValueError("keep must be at least 1")
        self.directory = os.path.join(os.path.abspath(data_dir), SNAPSHOT_DIR)
        self.fs = fs
        self.keep = keep

    def open(self) -> list[str]:
        """Create the directory if needed and remove temp files of interrupted writes."""
        fs = self.fs
        if not fs.exists(self.directory):
            fs.makedirs(self.directory)
            fs.fsync_dir(os.path.dirname(self.directory))
        removed = [n for n in fs.listdir(self.directory) if n.endswith(SNAPSHOT_TMP_SUFFIX)]
        for name in removed:
            fs.unlink(os.path.join(self.directory, name))
        if removed:
            fs.fsync_dir(self.directory)
        return removed

    def anchors(self) -> list[int]:
        """Anchor seqs of the snapshot files present, newest first."""
        if not self.fs.exists(self.directory):
            return []  # a read-only open of a directory that never had a snapshot
        found = []
        for name in self.fs.listdir(self.directory):
            m = SNAPSHOT_NAME_RE.match(name)
            if m is not None:
                found.append(int(m.group(1)))
        return sorted(found, reverse=True)

    def path_of(self, anchor_seq: int) -> str:
        return os.path.join(self.directory, snapshot_name(anchor_seq))

    def begin(self, anchor_seq: int) -> SnapshotWriter:
        if anchor_seq < 0:
            raise ValueError("anchor_seq must be >= 0")
        tmp = self.path_of(anchor_seq)[: -len(SNAPSHOT_SUFFIX)] + SNAPSHOT_TMP_SUFFIX
        if self.fs.exists(tmp):
            self.fs.unlink(tmp)  # an earlier upload of the same anchor that was abandoned
        handle = self.fs.open_write(tmp, create=True)
        try:
            write_all(handle, bytes(SNAPSHOT_HEADER_SIZE), 0)
        except BaseException:
            handle.close()
            raise
        return SnapshotWriter(self, anchor_seq, tmp, handle)

    def put(self, anchor_seq: int, blob: Buffer) -> SnapshotHeader:
        """Store ``blob`` as the snapshot at ``anchor_seq`` in one call."""
        writer = self.begin(anchor_seq)
        try:
            writer.write(blob)
            return writer.commit()
        except BaseException:
            writer.abort()
            raise

    def validate(self, anchor_seq: int) -> SnapshotHeader:
        """Read the whole file and check header, name, length and CRC."""
        path = self.path_of(anchor_seq)
        handle = self.fs.open_read(path)
        try:
            anchor, length, blob_crc = decode_snapshot_header(
                path, handle.pread(SNAPSHOT_HEADER_SIZE, 0)
            )
            if anchor != anchor_seq:
                raise SnapshotCorruptError(path, f"header anchor {anchor} does not match its name")
            size = handle.size()
            if size != SNAPSHOT_HEADER_SIZE + length:
                raise SnapshotCorruptError(
                    path,
                    f"header says {length} blob bytes, file holds {size - SNAPSHOT_HEADER_SIZE}",
                )
            crc = 0
            for chunk in _chunks(handle, length, READ_CHUNK):
                crc = crc32c(chunk, crc)
            if crc != blob_crc:
                raise SnapshotCorruptError(
                    path, f"blob CRC mismatch (stored {blob_crc:#010x}, computed {crc:#010x})"
                )
        finally:
            handle.close()
        return SnapshotHeader(path, anchor, length, blob_crc)

    def newest_valid(self) -> tuple[SnapshotHeader | None, list[SnapshotCorruptError]]:
        """The newest snapshot that validates, and the newer ones that did not (newest first)."""
        skipped: list[SnapshotCorruptError] = []
        for anchor in self.anchors():
            try:
                return self.validate(anchor), skipped
            except SnapshotCorruptError as exc:
                skipped.append(exc)
        return None, skipped

    def open_blob(self, header: SnapshotHeader) -> ReadHandle:
        return self.fs.open_read(header.path)

    def read_blob(self, header: SnapshotHeader) -> bytes:
        """The whole blob (small snapshots and tests; the service streams it in chunks)."""
        handle = self.open_blob(header)
        try:
            data = b"".join(_chunks(handle, header.length, READ_CHUNK))
        finally:
            handle.close()
        if crc32c(data) != header.crc:
            raise SnapshotCorruptError(header.path, "blob CRC mismatch on read")
        return data

    def prune(self) -> list[int]:
        """Remove every snapshot beyond the newest ``keep``; returns their anchors."""
        old = self.anchors()[self.keep :]
        for anchor in old:
            self.fs.unlink(self.path_of(anchor))
        if old:
            self.fs.fsync_dir(self.directory)
        return old


def _chunks(handle: ReadHandle, length: int, size: int) -> Iterator[bytes]:
    offset = SNAPSHOT_HEADER_SIZE
    end = SNAPSHOT_HEADER_SIZE + length
    while offset < end:
        data = handle.pread(min(size, end - offset), offset)
        if not data:
            raise SnapshotCorruptError(handle.path, f"unexpected end of file at offset {offset}")
        offset += len(data)
        yield data


def read_blob_chunk(handle: ReadHandle, header: SnapshotHeader, offset: int, size: int) -> bytes:
    """Up to ``size`` blob bytes from blob offset ``offset`` (for streaming)."""
    want = min(size, header.length - offset)
    data = handle.pread(want, SNAPSHOT_HEADER_SIZE + offset)
    if len(data) != want:
        raise SnapshotCorruptError(header.path, f"unexpected end of file at blob offset {offset}")
    return data
