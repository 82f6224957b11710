"""Snapshots in the service: the async side of :mod:`wal.snapshot`, and the socket operations.

Every file operation of a snapshot (hundreds of MiB are normal) runs off the event loop through
``aiofiles.os.wrap``, one chunk at a time, so appends keep being batched and ACKed while a
snapshot is stored or served. Protocol (docs/PROTOCOL.md, "Snapshots and recover"):
``snapshot_begin`` / ``snapshot_chunk`` / ``snapshot_commit`` / ``snapshot_abort`` upload one;
``snapshot_get`` streams the newest valid one; ``recover`` streams it and then turns into a
subscription from the record after its anchor.
"""

from __future__ import annotations

import asyncio
import os
import weakref
from collections import Counter
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import aiofiles.os
import structlog

from service.entry import StoredEntry
from service.errors import AckwalError
from service.protocol import ErrorCode, ProtocolError, describe, encode_error, encode_frame
from wal.crc import crc32c
from wal.snapshot import (
    SnapshotCorruptError,
    SnapshotHeader,
    SnapshotStore,
    SnapshotWriter,
    read_blob_chunk,
)

if TYPE_CHECKING:
    from service.connection import Connection
    from service.journal import Journal

log = structlog.get_logger("ackwal.snapshots")

CHUNK_BYTES = 1024 * 1024
MAX_QUEUED_CHUNKS = 16  # per upload; the client keeps a window of 4
T = TypeVar("T")


async def _off_loop(func: Callable[..., T], *args: Any) -> T:
    """Run a blocking file operation on a worker thread (aiofiles' executor wrapper)."""
    # Typed through a variable: the image's compiled build type-checks without aiofiles' stubs.
    result: T = await aiofiles.os.wrap(func)(*args)
    return result


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    anchor_seq: int
    size: int
    crc: int

    def to_wire(self) -> dict[str, int]:
        return {"anchor_seq": self.anchor_seq, "size": self.size, "crc": self.crc}


@dataclass(frozen=True, slots=True)
class SkippedSnapshot:
    """A newer snapshot that failed validation and was passed over."""

    anchor_seq: int
    reason: str


@dataclass(frozen=True, slots=True)
class Snapshot:
    info: SnapshotInfo
    data: bytes
    skipped: list[SkippedSnapshot] = field(default_factory=list)

    @property
    def anchor_seq(self) -> int:
        return self.info.anchor_seq


@dataclass(slots=True)
class Recovery:
    """What an engine rebuilds from: the newest valid snapshot, then every entry after it.

    ``entries`` yields entries from ``from_seq`` (history, then live); the engine has caught
    up with the journal as of the ``recover`` call once it has applied ``last_seq``.
    """

    snapshot: Snapshot | None
    from_seq: int
    last_seq: int
    skipped: list[SkippedSnapshot]
    entries: AsyncIterator[StoredEntry]


def _skipped(errors: list[SnapshotCorruptError]) -> list[SkippedSnapshot]:
    """Anchor (from the file name: the header may be the damaged part) and reason of each."""
    return [
        SkippedSnapshot(int(os.path.basename(e.path).split(".", 1)[0]), e.reason) for e in errors
    ]


class Upload:
    """A snapshot being stored; chunks are written in order, off the loop."""

    def __init__(self, snapshots: Snapshots, writer: SnapshotWriter) -> None:
        self.snapshots = snapshots
        self.writer = writer

    @property
    def anchor_seq(self) -> int:
        return self.writer.anchor_seq

    @property
    def size(self) -> int:
        return self.writer.length

    async def write(self, data: bytes) -> None:
        try:
            await _off_loop(self.writer.write, data)
        except OSError as exc:
            self.abort_now()
            raise AckwalError(f"snapshot write failed: {exc}", ErrorCode.INTERNAL) from None

    async def commit(self, size: int | None = None, crc: int | None = None) -> SnapshotInfo:
        writer = self.writer
        if (size is not None and size != writer.length) or (crc is not None and crc != writer.crc):
            self.abort_now()
            raise AckwalError(
                f"snapshot check failed: the client sent {size} bytes with CRC {crc}, the server "
                f"received {writer.length} bytes with CRC {writer.crc}; nothing was stored",
                ErrorCode.BAD_REQUEST,
            )
        try:
            header = await _off_loop(writer.commit)
        except OSError as exc:
            self.abort_now()
            raise AckwalError(f"snapshot commit failed: {exc}", ErrorCode.INTERNAL) from None
        return self.snapshots.committed(header)

    def abort_now(self) -> None:
        """Close and unlink the temp file (small, synchronous: also runs on cancellation)."""
        self.writer.abort()


class Snapshots:
    """A journal's snapshot store, used from the event loop."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.store = SnapshotStore(
            journal.wal.directory, journal.wal.fs, journal.settings.snapshot_keep
        )
        self.newest_anchor: int | None = None  # newest valid snapshot (validated or written here)
        self.written = 0
        self.pins: Counter[int] = Counter()  # seqs a recover in progress still needs

    async def open(self) -> None:
        """Remove temp files of interrupted writes and find the newest valid snapshot."""
        removed = [] if self.journal.wal.readonly else await _off_loop(self.store.open)
        if removed:
            log.info("snapshot.temp_files_removed", journal=self.journal.name, files=removed)
        header, _ = await self.newest()
        self.newest_anchor = header.anchor_seq if header is not None else None

    def lowest_pin(self) -> int | None:
        return min(self.pins) if self.pins else None

    # -- storing ------------------------------------------------------------------------------

    async def begin(self, anchor_seq: int) -> Upload:
        journal = self.journal
        if journal.wal.readonly or journal.refusal is not None:  # refusal: a standby, fenced
            raise AckwalError(
                f"journal {journal.name} is open read-only: snapshots cannot be stored",
                ErrorCode.BAD_REQUEST,
            )
        if type(anchor_seq) is not int or anchor_seq < 0:
            raise AckwalError("field 'anchor_seq' must be an integer >= 0", ErrorCode.BAD_REQUEST)
        if anchor_seq > journal.last_seq:
            raise AckwalError(
                f"anchor_seq {anchor_seq} is beyond the journal's last durable seq "
                f"{journal.last_seq}",
                ErrorCode.BAD_REQUEST,
            )
        first = journal.wal.first_seq
        if anchor_seq + 1 < first:
            raise AckwalError(
                f"a snapshot at anchor_seq {anchor_seq} could never be recovered: the records "
                f"after it are no longer retained; the first available seq is {first}",
                ErrorCode.OUT_OF_RANGE,
            )
        try:
            writer = await _off_loop(self.store.begin, anchor_seq)
        except OSError as exc:
            raise AckwalError(f"snapshot create failed: {exc}", ErrorCode.INTERNAL) from None
        return Upload(self, writer)

    def committed(self, header: SnapshotHeader) -> SnapshotInfo:
        self.written += 1
        if self.newest_anchor is None or header.anchor_seq > self.newest_anchor:
            self.newest_anchor = header.anchor_seq
        log.info(
            "snapshot.stored",
            journal=self.journal.name,
            anchor_seq=header.anchor_seq,
            bytes=header.length,
        )
        self.journal.retention.kick()
        return SnapshotInfo(header.anchor_seq, header.length, header.crc)

    async def put(self, anchor_seq: int, data: bytes | AsyncIterable[bytes]) -> SnapshotInfo:
        """Store a snapshot from bytes or an async iterator of chunks."""
        upload = await self.begin(anchor_seq)
        try:
            if isinstance(data, bytes | bytearray | memoryview):
                view = memoryview(data)
                for start in range(0, len(view), CHUNK_BYTES):
                    await upload.write(bytes(view[start : start + CHUNK_BYTES]))
            else:
                async for chunk in data:
                    await upload.write(bytes(chunk))
            return await upload.commit()
        except BaseException:
            upload.abort_now()
            raise

    # -- serving ------------------------------------------------------------------------------

    async def newest(self) -> tuple[SnapshotHeader | None, list[SkippedSnapshot]]:
        """The newest snapshot that validates; corrupt newer ones are passed over loudly."""
        header, errors = await _off_loop(self.store.newest_valid)
        skipped = _skipped(errors)
        for exc in errors:
            log.warning(
                "snapshot.corrupt_fallback",
                journal=self.journal.name,
                path=exc.path,
                reason=exc.reason,
                detail="passed over; falling back to the previous snapshot",
            )
        return header, skipped

    async def chunks(
        self, header: SnapshotHeader, chunk_size: int = CHUNK_BYTES
    ) -> AsyncIterator[bytes]:
        """The blob in chunks read off the loop, its CRC checked again as it is read."""
        handle = await _off_loop(self.store.open_blob, header)
        try:
            offset = 0
            crc = 0
            while offset < header.length:
                data = await _off_loop(read_blob_chunk, handle, header, offset, chunk_size)
                crc = crc32c(data, crc)
                offset += len(data)
                yield data
            if crc != header.crc:
                raise SnapshotCorruptError(header.path, "blob changed while it was being read")
        finally:
            await _off_loop(handle.close)

    async def get(self) -> Snapshot | None:
        header, skipped = await self.newest()
        if header is None:
            return None
        data = b"".join([c async for c in self.chunks(header)])
        return Snapshot(SnapshotInfo(header.anchor_seq, header.length, header.crc), data, skipped)

    async def recover(self) -> Recovery:
        """The newest valid snapshot and an iterator over every entry after its anchor.

        The records after the newest valid snapshot's anchor are never deleted by retention;
        those after an older one (when the newest is corrupt) are kept while this call reads
        the snapshot, not afterwards: iterate ``entries`` promptly.
        """
        journal = self.journal
        header, skipped = await self.newest()
        from_seq = header.anchor_seq + 1 if header is not None else 1
        self.pins[from_seq] += 1
        try:
            _check_retained(journal, from_seq)
            snapshot = None
            if header is not None:
                data = b"".join([c async for c in self.chunks(header)])
                info = SnapshotInfo(header.anchor_seq, header.length, header.crc)
                snapshot = Snapshot(info, data, skipped)
            _check_retained(journal, from_seq)
        finally:
            self._unpin(from_seq)
        entries = journal.subscribe(from_seq)
        return Recovery(snapshot, from_seq, journal.last_seq, skipped, entries)

    def _unpin(self, seq: int) -> None:
        self.pins[seq] -= 1
        if self.pins[seq] <= 0:
            del self.pins[seq]


def _check_retained(journal: Journal, from_seq: int) -> None:
    first = journal.wal.first_seq
    if from_seq < first:
        raise AckwalError(
            f"recover needs records from seq {from_seq}, but the first available seq is "
            f"{first} (no snapshot covers the deleted records)",
            ErrorCode.OUT_OF_RANGE,
        )


# -- socket operations --------------------------------------------------------------------------


@dataclass(slots=True)
class _Session:
    """One upload on one connection: requests are handled in order by one worker task."""

    queue: asyncio.Queue[tuple[str, int, Any]] = field(default_factory=asyncio.Queue)
    task: asyncio.Task[None] | None = None


@dataclass(slots=True)
class _ConnState:
    uploads: dict[int, _Session] = field(default_factory=dict)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    next_upload: int = 1


_STATE: weakref.WeakKeyDictionary[Connection, _ConnState] = weakref.WeakKeyDictionary()


def _state(conn: Connection) -> _ConnState:
    state = _STATE.get(conn)
    if state is None:
        state = _STATE[conn] = _ConnState()
    return state


def _spawn(conn: Connection, coro: Any, name: str) -> None:
    state = _state(conn)
    task: asyncio.Task[None] = asyncio.create_task(coro, name=name)
    state.tasks.add(task)
    task.add_done_callback(state.tasks.discard)


def _reply(conn: Connection, message: dict[str, Any]) -> None:
    conn.answered(encode_frame(message), count=False)


def _reply_error(conn: Connection, rid: int, code: str, message: str) -> None:
    conn.server.count_error(code)
    conn.answered(encode_error(rid, code, message), count=False)


def connection_lost(conn: Connection) -> None:
    """Stop the connection's streams and abandon its unfinished uploads."""
    state = _STATE.pop(conn, None)
    if state is None:
        return
    for task in list(state.tasks):
        task.cancel()


def _upload_session(conn: Connection, message: dict[str, Any]) -> tuple[int, _Session]:
    uid = message.get("upload")
    session = _state(conn).uploads.get(uid) if type(uid) is int else None
    if session is None or type(uid) is not int:
        raise ProtocolError(
            ErrorCode.BAD_REQUEST, f"no snapshot upload {describe(uid)} on this connection"
        )
    if session.queue.qsize() >= MAX_QUEUED_CHUNKS:
        raise ProtocolError(
            ErrorCode.BUSY,
            f"more than {MAX_QUEUED_CHUNKS} snapshot requests queued for upload {uid}; wait for "
            "the replies",
        )
    return uid, session


def op_snapshot_begin(conn: Connection, message: dict[str, Any], rid: int, recv: int) -> None:
    journal = conn._journal(message)
    anchor = message.get("anchor_seq")
    if type(anchor) is not int or anchor < 0:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "field 'anchor_seq' must be an integer >= 0")
    state = _state(conn)
    uid = state.next_upload
    state.next_upload += 1
    session = _Session()
    state.uploads[uid] = session
    _spawn(conn, _upload_worker(conn, journal, uid, session, rid, anchor), f"snapshot-upload-{uid}")


def op_snapshot_chunk(conn: Connection, message: dict[str, Any], rid: int, recv: int) -> None:
    data = message.get("data")
    if not isinstance(data, bytes):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "field 'data' must be binary")
    _uid, session = _upload_session(conn, message)
    session.queue.put_nowait(("chunk", rid, data))


def op_snapshot_commit(conn: Connection, message: dict[str, Any], rid: int, recv: int) -> None:
    size = message.get("size")
    crc = message.get("crc")
    if size is not None and (type(size) is not int or size < 0):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "field 'size' must be an integer >= 0")
    if crc is not None and (type(crc) is not int or not 0 <= crc < 1 << 32):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "field 'crc' must be a 32-bit unsigned integer")
    _uid, session = _upload_session(conn, message)
    session.queue.put_nowait(("commit", rid, (size, crc)))


def op_snapshot_abort(conn: Connection, message: dict[str, Any], rid: int, recv: int) -> None:
    _uid, session = _upload_session(conn, message)
    session.queue.put_nowait(("abort", rid, None))


async def _upload_worker(
    conn: Connection, journal: Journal, uid: int, session: _Session, begin_rid: int, anchor: int
) -> None:
    state = _state(conn)
    upload: Upload | None = None
    finished = False
    try:
        try:
            upload = await journal.snapshots.begin(anchor)
        except AckwalError as exc:
            state.uploads.pop(uid, None)
            _reply_error(conn, begin_rid, exc.code, exc.message)
            return
        _reply(conn, {"id": begin_rid, "upload": uid, "anchor_seq": anchor})
        while True:
            kind, rid, arg = await session.queue.get()
            try:
                if kind == "chunk":
                    await upload.write(arg)
                    _reply(conn, {"id": rid, "upload": uid, "received": upload.size})
                    continue
                state.uploads.pop(uid, None)
                finished = True
                if kind == "abort":
                    upload.abort_now()
                    _reply(conn, {"id": rid, "aborted": uid})
                else:
                    info = await upload.commit(*arg)
                    _reply(conn, {"id": rid, "snapshot": info.to_wire()})
            except AckwalError as exc:
                state.uploads.pop(uid, None)
                finished = True
                _reply_error(conn, rid, exc.code, exc.message)
            except Exception as exc:  # a bug costs this upload, never the connection
                log.exception("snapshot.upload_failed", journal=journal.name, upload=uid)
                state.uploads.pop(uid, None)
                upload.abort_now()
                finished = True
                _reply_error(conn, rid, ErrorCode.INTERNAL, f"snapshot upload failed: {exc}")
            if finished:
                break
    finally:
        state.uploads.pop(uid, None)
        if upload is not None and not finished:
            upload.abort_now()
        while not session.queue.empty():  # requests behind a failed one: say so
            _kind, rid, _arg = session.queue.get_nowait()
            _reply_error(conn, rid, ErrorCode.BAD_REQUEST, f"snapshot upload {uid} has ended")


def _header_wire(header: SnapshotHeader | None) -> dict[str, int] | None:
    if header is None:
        return None
    return SnapshotInfo(header.anchor_seq, header.length, header.crc).to_wire()


def _skipped_wire(skipped: list[SkippedSnapshot]) -> list[dict[str, Any]]:
    return [{"anchor_seq": s.anchor_seq, "reason": s.reason} for s in skipped]


async def _stream_blob(
    conn: Connection, journal: Journal, rid: int, header: SnapshotHeader
) -> bool:
    """Push the blob as ``chunk`` frames at the pace the client reads; False if it went away."""
    chunk_size = min(CHUNK_BYTES, conn.server.settings.max_frame_bytes // 2)
    async for data in journal.snapshots.chunks(header, chunk_size):
        while not conn.can_push():
            if conn.closed:
                return False
            await conn.wait_writable()
        if conn.closed:
            return False
        _reply(conn, {"id": rid, "chunk": data})
    return True


def op_snapshot_get(conn: Connection, message: dict[str, Any], rid: int, recv: int) -> None:
    journal = conn._journal(message)
    _spawn(conn, _serve_get(conn, journal, rid), "snapshot-get")


async def _serve_get(conn: Connection, journal: Journal, rid: int) -> None:
    try:
        header, skipped = await journal.snapshots.newest()
        _reply(
            conn,
            {"id": rid, "snapshot": _header_wire(header), "fallbacks": _skipped_wire(skipped)},
        )
        if header is not None and await _stream_blob(conn, journal, rid, header):
            _reply(conn, {"id": rid, "end": True})
    except AckwalError as exc:
        _reply_error(conn, rid, exc.code, exc.message)
    except Exception as exc:  # a failing read ends this request, never the service
        log.error("snapshot.serve_failed", journal=journal.name, error=str(exc))
        _reply_error(conn, rid, ErrorCode.INTERNAL, f"snapshot read failed: {exc}")


def op_recover(conn: Connection, message: dict[str, Any], rid: int, recv: int) -> None:
    journal = conn._journal(message)
    if conn.has_subscription(rid):
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"subscription id {rid} is already in use")
    _spawn(conn, _serve_recover(conn, journal, rid), "recover")


async def _serve_recover(conn: Connection, journal: Journal, rid: int) -> None:
    snapshots = journal.snapshots
    from_seq = 0
    try:
        header, skipped = await snapshots.newest()
        from_seq = header.anchor_seq + 1 if header is not None else 1
        snapshots.pins[from_seq] += 1
        _check_retained(journal, from_seq)
        _reply(
            conn,
            {
                "id": rid,
                "snapshot": _header_wire(header),
                "fallbacks": _skipped_wire(skipped),
                "from_seq": from_seq,
                "last_seq": journal.last_seq,
            },
        )
        if header is not None and not await _stream_blob(conn, journal, rid, header):
            return
        _reply(conn, {"id": rid, "end": True, "from_seq": from_seq})
        # No await between the end frame and the subscription: its records follow at once.
        conn.start_subscription(journal, rid, from_seq)
    except AckwalError as exc:
        _reply_error(conn, rid, exc.code, exc.message)
    except Exception as exc:
        log.error("snapshot.recover_failed", journal=journal.name, error=str(exc))
        _reply_error(conn, rid, ErrorCode.INTERNAL, f"recover failed: {exc}")
    finally:
        if from_seq:
            snapshots._unpin(from_seq)


HANDLERS: dict[str, Callable[[Connection, dict[str, Any], int, int], None]] = {
    "snapshot_begin": op_snapshot_begin,
    "snapshot_chunk": op_snapshot_chunk,
    "snapshot_commit": op_snapshot_commit,
    "snapshot_abort": op_snapshot_abort,
    "snapshot_get": op_snapshot_get,
    "recover": op_recover,
}
