"""Durable follower cursors: named positions that survive a crash of the consumer or the journal.

A cursor records the last seq a downstream consumer has durably processed. ``subscribe`` with a
cursor resumes right after it; retention never deletes what the lowest cursor still needs.

Storage: one small file, ``cursors.ackc``, in the journal's data directory, replaced atomically
(temp file, fsync, rename, directory fsync) holding every cursor. Not CURSOR records in the WAL:
those would take seqs in the engines' command stream, show up in every subscription, and be
deleted with their segment by retention (so they would have to be re-written before each
deletion). A commit costs one small write, two fsyncs and a rename; concurrent commits are
coalesced into one file write (group commit), so the cost is per write, not per cursor. The file
is tiny (tens of bytes per cursor) and read once at open.

File layout (little-endian)::

    0  8  magic    b"ACKWALCU"
    8  4  crc      CRC-32C of the body
    12 4  length   body length
    16 .. body     msgpack map {"version": 1, "cursors": {name: seq}}

A missing file means no cursors. A leftover ``cursors.ackc.tmp`` is an interrupted replace (the
rename never happened): the previous file is the truth and the temp file is ignored (and removed
by the next commit). A file that fails its CRC refuses the start: cursors guard against data
loss, so guessing them is not an option.
"""

from __future__ import annotations

import asyncio
import os
import re
import struct
from collections.abc import Callable
from typing import Any

import msgpack
import structlog

from service.errors import AckwalError
from service.protocol import ErrorCode, ProtocolError, describe
from wal.crc import crc32c
from wal.fileio import OS_FILES, FileLayer

log = structlog.get_logger("ackwal.cursors")

CURSOR_FILE = "cursors.ackc"
TMP_SUFFIX = ".tmp"
MAGIC = b"ACKWALCU"
HEADER = struct.Struct("<8sII")
FILE_VERSION = 1
NAME_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_packer = msgpack.Packer(use_bin_type=True)


class CursorFileError(AckwalError):
    """The cursor file is damaged: the journal refuses to start rather than guess positions."""

    def __init__(self, message: str) -> None:
        super().__init__(message, ErrorCode.INTERNAL)


def check_name(value: Any) -> str:
    """A cursor name: 1-128 characters from letters, digits and ``. _ : -``."""
    if type(value) is not str or not NAME_RE.match(value):
        raise ProtocolError(
            ErrorCode.BAD_REQUEST,
            f"field 'cursor' must be a name of 1-128 characters [A-Za-z0-9._:-], "
            f"got {describe(value)}",
        )
    return value


def encode_cursor_file(cursors: dict[str, int]) -> bytes:
    body: bytes = _packer.pack({"version": FILE_VERSION, "cursors": cursors})
    return HEADER.pack(MAGIC, crc32c(body), len(body)) + body


def decode_cursor_file(path: str, data: bytes) -> dict[str, int]:
    if len(data) < HEADER.size:
        raise CursorFileError(f"cursor file {path} is truncated ({len(data)} bytes)")
    magic, crc, length = HEADER.unpack_from(data)
    body = data[HEADER.size :]
    if magic != MAGIC:
        raise CursorFileError(f"cursor file {path} has a bad magic {magic!r}")
    if length != len(body) or crc32c(body) != crc:
        raise CursorFileError(f"cursor file {path} fails its CRC check (length {len(body)})")
    doc = msgpack.unpackb(body, raw=False)
    cursors = doc.get("cursors") if isinstance(doc, dict) else None
    if doc.get("version") != FILE_VERSION or not isinstance(cursors, dict):
        raise CursorFileError(f"cursor file {path} is not a version-{FILE_VERSION} cursor file")
    return {str(k): int(v) for k, v in cursors.items()}


class CursorStore:
    """The journal's cursors. ``commit`` is a coroutine; reads are plain attribute lookups."""

    def __init__(
        self,
        directory: str,
        fs: FileLayer = OS_FILES,
        *,
        last_seq: Callable[[], int] = lambda: 0,
        read_only: bool = False,
    ) -> None:
        self.path = os.path.join(directory, CURSOR_FILE)
        self.directory = directory
        self.fs = fs
        self._last_seq = last_seq
        self.read_only = read_only
        self._durable: dict[str, int] = {}  # what the file on disk holds
        self._staged: dict[str, int | None] = {}  # changes waiting for the next file write
        self._waiters: list[asyncio.Future[None]] = []
        self._writer: asyncio.Task[None] | None = None
        self.failed: str | None = None
        self.writes = 0

    def load(self) -> None:
        """Read the cursor file (blocking; call off the loop at open)."""
        if self.fs.exists(self.path):
            self._durable = decode_cursor_file(self.path, self.fs.read_file(self.path))

    # -- reads --------------------------------------------------------------------------------

    def get(self, name: str) -> int | None:
        """The committed (durable) seq of ``name``, or None if there is no such cursor."""
        return self._durable.get(name)

    def all(self) -> dict[str, int]:
        return dict(self._durable)

    def lowest(self) -> int | None:
        """The lowest committed seq over all cursors (retention keeps every seq above it)."""
        return min(self._durable.values(), default=None)

    def __len__(self) -> int:
        return len(self._durable)

    # -- writes -------------------------------------------------------------------------------

    def _check_writable(self) -> None:
        if self.read_only:
            raise AckwalError(
                "the service is read-only: cursors can be read and followed, not moved",
                ErrorCode.READ_ONLY,
            )
        if self.failed is not None:
            raise AckwalError(f"the cursor store failed: {self.failed}", ErrorCode.INTERNAL)

    async def commit(self, name: str, seq: int) -> int:
        """Move ``name`` to ``seq`` durably; returns once the file is synced.

        Never backwards (a lower seq is refused; the same seq is a no-op), never beyond the
        journal's last durable seq.
        """
        check_name(name)
        if type(seq) is not int or seq < 0:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "field 'seq' must be an integer >= 0")
        self._check_writable()
        last = self._last_seq()
        if seq > last:
            raise AckwalError(
                f"cannot commit cursor {name!r} to seq {seq}: the journal's last seq is {last}",
                ErrorCode.OUT_OF_RANGE,
            )
        staged = self._staged.get(name, self._durable.get(name))
        if staged is not None and seq < staged:
            raise ProtocolError(
                ErrorCode.BAD_REQUEST,
                f"cursor {name!r} is at seq {staged}; a cursor never moves backwards (got {seq})",
            )
        if staged == seq and name not in self._staged:
            return seq  # already durable there
        self._staged[name] = seq
        await self._flush()
        return seq

    async def delete(self, name: str) -> bool:
        """Remove a cursor (an operator retiring a consumer); True if it existed."""
        check_name(name)
        self._check_writable()
        if name not in self._durable and name not in self._staged:
            return False
        self._staged[name] = None
        await self._flush()
        return True

    async def _flush(self) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_loop(), name="cursor-writer")
        await fut

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._waiters:
                waiters, self._waiters = self._waiters, []
                staged, self._staged = self._staged, {}
                state = dict(self._durable)
                for name, seq in staged.items():
                    if seq is None:
                        state.pop(name, None)
                    else:
                        state[name] = seq
                try:
                    await loop.run_in_executor(None, self._replace_file, state)
                except OSError as exc:
                    # Sticky, as for the WAL: a failed write or fsync is never retried.
                    self.failed = f"writing {self.path} failed: {exc}"
                    log.critical("cursors.write_failed", path=self.path, error=str(exc))
                    error = AckwalError(
                        f"the cursor store failed: {self.failed}", ErrorCode.INTERNAL
                    )
                    for fut in waiters + self._waiters:
                        if not fut.done():
                            fut.set_exception(error)
                    self._waiters = []
                    return
                self._durable = state
                self.writes += 1
                for fut in waiters:
                    if not fut.done():
                        fut.set_result(None)
        finally:
            self._writer = None

    def _replace_file(self, state: dict[str, int]) -> None:
        tmp = self.path + TMP_SUFFIX
        data = encode_cursor_file(state)
        if self.fs.exists(tmp):
            self.fs.unlink(tmp)  # left by an interrupted replace
        handle = self.fs.open_write(tmp, create=True)
        try:
            handle.pwrite(data, 0)
            handle.fsync()
        finally:
            handle.close()
        self.fs.rename(tmp, self.path)
        self.fs.fsync_dir(self.directory)

    async def close(self) -> None:
        """Wait for a write in progress (its waiters are answered)."""
        writer = self._writer
        if writer is not None:
            await asyncio.wait([writer])
