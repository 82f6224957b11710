"""A file layer that knows what a disk would keep, so tests can cut the power or fail the disk.

This is the one fake DEVELOPERS.md allows, and it sits at the lowest layer: everything above it
(writer, recovery, reader, the service) runs unchanged. :class:`FaultyFileLayer` implements
:class:`wal.fileio.FileLayer` by performing every operation on real files, so reads go through
the OS as in production. Beside the real files it keeps a model of what is *durable*:

* per file, tracked by identity (so renames are followed): its content as of its last successful
  fsync/fdatasync, and the writes and truncations made since;
* per directory: its entries (name -> file) as of its last successful directory fsync, and the
  creates, renames and unlinks made since.

:meth:`FaultyFileLayer.power_cut` rewrites the real files to one state a disk might hold after
losing power (unsynced directory changes undone; each surviving file holds its durable content,
optionally plus a random, possibly torn, prefix of its unsynced writes) and kills every open
handle. Files the layer finds on disk that it did not create count as durable, and so does
everything on disk right after a power cut. Directory tracking is lazy: a name is only modelled
once an operation of this layer touches it, so untouched files are never rewritten.

Faults: :meth:`FaultyFileLayer.fail_next` and :meth:`FaultyFileLayer.fail_always` make chosen
operations raise an ``OSError`` (EIO, ENOSPC, ...). :attr:`FaultyFileLayer.hook` runs a callback
before and after every operation, on the calling thread, so a test can cut the power at every
fsync boundary of a scripted run. :attr:`FaultyFileLayer.calls` records every operation.

Linux behaviour modelled on purpose:

* A failed fsync/fdatasync loses that file's unsynced writes for good: the kernel marks the dirty
  pages clean, so reads still return the new bytes but no later fsync will write them
  (PostgreSQL's "fsyncgate"). The model drops them, and a later power cut loses them.
* A failed directory fsync keeps the directory changes pending: directory metadata goes through
  the file system's journal, which either commits them later or aborts the whole file system.
* fdatasync and fsync persist the same thing here (data and the size needed to read it back).
* Syncing a file does not make its directory entry durable; only a directory fsync does.

Not modelled: hard links, the durability of directories themselves (``makedirs`` is treated as
durable), and files changed behind the layer's back while it tracks them. A rename between two
directories is two independent changes. The model keeps the durable content of every touched file
in memory, so use small segments.
"""

from __future__ import annotations

import errno
import os
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from wal.fileio import Buffer, ReadHandle, WriteHandle

# What the layer calls each operation: "open" opens an existing file (to read or to write),
# "create" makes a new one, "read" is read_file or a pread.
FsOp = Literal[
    "listdir",
    "exists",
    "makedirs",
    "read",
    "open",
    "create",
    "write",
    "truncate",
    "fdatasync",
    "fsync",
    "fsync_dir",
    "rename",
    "unlink",
]
Phase = Literal["before", "after"]

SYNC_OPS: frozenset[str] = frozenset({"fdatasync", "fsync", "fsync_dir"})
"""The operations that make something durable: the boundaries a power-cut test walks."""

MUTATING_OPS: frozenset[str] = frozenset(
    {
        "makedirs",
        "create",
        "write",
        "truncate",
        "fdatasync",
        "fsync",
        "fsync_dir",
        "rename",
        "unlink",
    }
)
"""The operations that change what is on disk or what is durable."""


class PowerLossError(OSError):
    """Raised by every operation after a power cut: by dead handles, and by the layer itself
    until :meth:`FaultyFileLayer.power_on`. An ``OSError`` (EIO), so the WAL fails stop on it."""

    def __init__(self, what: str) -> None:
        super().__init__(errno.EIO, "power is off (simulated power cut)", what)


@dataclass(frozen=True, slots=True)
class FsCall:
    """One operation as seen by the layer; what hooks, fault predicates and tests look at."""

    op: FsOp
    path: str  # for handle operations: the handle's ``path`` attribute at the time of the call
    file_id: int | None = None  # identity of the file, stable across renames
    target: str | None = None  # rename destination
    offset: int | None = None
    nbytes: int | None = None


Hook = Callable[[FsCall, Phase], None]


@dataclass(slots=True)
class Fault:
    """Make matching calls of ``op`` raise ``OSError(error)``.

    The first ``skip`` matching calls pass, then ``times`` calls fail (``None``: every call from
    then on). ``when`` narrows the match. For writes, ``partial`` bytes are really written before
    the error, like a short write followed by a failure.
    """

    op: FsOp
    error: int = errno.EIO
    skip: int = 0
    times: int | None = 1
    when: Callable[[FsCall], bool] | None = None
    partial: int = 0
    hits: int = 0

    def fire(self, call: FsCall) -> bool:
        """Count ``call`` against this fault; True if it must fail."""
        if call.op != self.op or (self.times is not None and self.times <= 0):
            return False
        if self.when is not None and not self.when(call):
            return False
        if self.skip > 0:
            self.skip -= 1
            return False
        if self.times is not None:
            self.times -= 1
        self.hits += 1
        return True


@dataclass(frozen=True, slots=True)
class _Write:
    offset: int
    data: bytes


@dataclass(frozen=True, slots=True)
class _Truncate:
    size: int


_Change = _Write | _Truncate


class _Node:
    """One file (an inode): its durable content and its unsynced changes."""

    __slots__ = ("durable", "file_id", "path", "pending")

    def __init__(self, file_id: int, path: str | None, durable: bytearray | None) -> None:
        self.file_id = file_id
        self.path = path  # its current name; None once unlinked
        # None: not loaded yet, equal to the real content at ``path`` (a file found on disk).
        self.durable = durable
        self.pending: list[_Change] = []


# One atomic directory change: the names it sets (to a file) or removes (None).
_DirChange = tuple[tuple[str, _Node | None], ...]


class _Dir:
    """One directory: durable entries, current entries, and the changes in between."""

    __slots__ = ("changes", "current", "durable")

    def __init__(self) -> None:
        self.durable: dict[str, _Node] = {}
        self.current: dict[str, _Node] = {}
        self.changes: list[_DirChange] = []


class FaultyWriteHandle:
    """A real file descriptor whose writes and syncs the layer models."""

    __slots__ = ("_generation", "_layer", "fd", "node", "path")

    def __init__(
        self, layer: FaultyFileLayer, node: _Node, path: str, fd: int, generation: int
    ) -> None:
        self._layer = layer
        self._generation = generation
        self.node = node
        self.path = path
        self.fd = fd

    @property
    def file_id(self) -> int:
        return self.node.file_id

    @property
    def dead(self) -> bool:
        """True once a power cut happened after this handle was opened."""
        return self._layer._is_dead(self._generation)

    def pwrite(self, data: Buffer, offset: int) -> int:
        return self._layer._pwrite(self, data, offset)

    def fdatasync(self) -> None:
        self._layer._sync(self, "fdatasync")

    def fsync(self) -> None:
        self._layer._sync(self, "fsync")

    def truncate(self, size: int) -> None:
        self._layer._truncate(self, size)

    def size(self) -> int:
        self._layer._check_handle(self._generation, FsCall("read", self.path, self.file_id))
        return os.fstat(self.fd).st_size

    def close(self) -> None:
        """Close the descriptor; never fails, even on a dead handle, so cleanup always runs."""
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


class FaultyReadHandle:
    """A real read-only file descriptor; dies at a power cut like every handle."""

    __slots__ = ("_generation", "_layer", "fd", "path")

    def __init__(self, layer: FaultyFileLayer, path: str, fd: int, generation: int) -> None:
        self._layer = layer
        self._generation = generation
        self.path = path
        self.fd = fd

    def pread(self, size: int, offset: int) -> bytes:
        call = FsCall("read", self.path, offset=offset, nbytes=size)
        self._layer._enter(call, self._generation)
        with self._layer._lock:
            self._layer._check_handle(self._generation, call)
            data = os.pread(self.fd, size, offset)
        self._layer._leave(call)
        return data

    def size(self) -> int:
        self._layer._check_handle(self._generation, FsCall("read", self.path))
        return os.fstat(self.fd).st_size

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


class FaultyFileLayer:
    """A :class:`wal.fileio.FileLayer` over real files that can lose power and fail on demand.

    Thread-safe: the WAL prepares spare segments on a background thread. Every real operation
    and model update happens under one lock; hooks run outside it, on the calling thread.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._dirs: dict[str, _Dir] = {}
        self._next_id = 1
        self._generation = 0
        self._powered = True
        self._faults: list[Fault] = []
        self.hook: Hook | None = None
        """Called as ``hook(call, phase)`` before and after every operation (after: only if it
        succeeded). A hook may call :meth:`power_cut`; the operation then raises
        :class:`PowerLossError` if the cut came before it, and completes if it came after."""
        self.calls: list[FsCall] = []
        """Every operation attempted, in order (including failed ones)."""
        self.power_cuts = 0

    # -- faults -------------------------------------------------------------------------------

    def fail_next(
        self,
        op: FsOp,
        error: int = errno.EIO,
        *,
        skip: int = 0,
        when: Callable[[FsCall], bool] | None = None,
        partial: int = 0,
    ) -> Fault:
        """Fail one call of ``op``: the next matching one, or the one after ``skip`` others."""
        return self.add_fault(Fault(op, error, skip=skip, when=when, partial=partial))

    def fail_always(
        self,
        op: FsOp,
        error: int = errno.EIO,
        *,
        skip: int = 0,
        when: Callable[[FsCall], bool] | None = None,
    ) -> Fault:
        """Fail every matching call of ``op`` (after ``skip``) until :meth:`clear_faults`."""
        return self.add_fault(Fault(op, error, skip=skip, times=None, when=when))

    def add_fault(self, fault: Fault) -> Fault:
        """Arm ``fault``. Faults are tried in the order added; the first that fires wins."""
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        """Lift every injected fault (e.g. "the operator freed disk space")."""
        with self._lock:
            self._faults.clear()

    # -- power --------------------------------------------------------------------------------

    @property
    def powered(self) -> bool:
        return self._powered

    def power_cut(
        self,
        rng: random.Random | None = None,
        keep_torn_prefix: bool = True,
        *,
        sector_size: int | None = None,
        keep_dir_changes: bool = False,
    ) -> bool:
        """Lose power: rewrite the real files to what the disk might hold, kill every handle.

        Without ``rng`` every unsynced byte and directory change is lost. With ``rng``, each
        file keeps a random prefix of its unsynced writes, and with ``keep_torn_prefix`` the
        last write kept may be cut at a random byte (a torn write). ``sector_size`` replaces
        the prefix by out-of-order writeback: each ``sector_size``-aligned piece of each unsynced
        write (and each truncation) survives independently, as pages may reach the disk in any
        order. ``keep_dir_changes`` lets each directory keep a random prefix of its unsynced
        changes, as a journaling file system may commit them without a directory fsync.

        Every operation then raises :class:`PowerLossError` until :meth:`power_on`. Returns
        False, changing nothing, if the power is already off: two threads' hooks may race to
        cut it, and only the first cut happens.
        """
        if sector_size is not None and sector_size <= 0:
            raise ValueError("sector_size must be positive")
        with self._lock:
            if not self._powered:
                return False
            self._powered = False
            self._generation += 1
            self.power_cuts += 1
            plan = self._plan_cut(rng, keep_dir_changes)
            contents: dict[int, bytes] = {}
            writes: list[tuple[str, bytes]] = []
            for path, node in plan.items():
                if node is None:
                    continue
                if node.durable is None and node.path == path:
                    continue  # found on disk, never changed since: nothing to rewrite
                if node.file_id not in contents:
                    contents[node.file_id] = _surviving_content(
                        self._durable_bytes(node), node.pending, rng, keep_torn_prefix, sector_size
                    )
                writes.append((path, contents[node.file_id]))
            for path, node in plan.items():
                if node is None and os.path.isfile(path):
                    os.unlink(path)
            for path, data in writes:
                _overwrite(path, data)
            # What is on disk now is, by definition, what the disk holds: start afresh.
            self._dirs.clear()
        return True

    def power_on(self) -> None:
        """Restore power after a cut: new operations work again; old handles stay dead."""
        with self._lock:
            self._powered = True

    def durable_content(self, path: str) -> bytes | None:
        """What a power cut without ``rng`` would leave at ``path`` (None: no such file)."""
        path = os.path.abspath(path)
        with self._lock:
            d, name = self._dir_of(path)
            if name in d.durable:
                return self._durable_bytes(d.durable[name])
            if name in d.current or not os.path.isfile(path):
                return None
            with open(path, "rb") as f:
                return f.read()  # found on disk, untouched: durable by definition

    # -- FileLayer ----------------------------------------------------------------------------

    def listdir(self, path: str) -> list[str]:
        call = FsCall("listdir", os.path.abspath(path))
        self._enter(call)
        with self._lock:
            self._check_power(call)
            names = os.listdir(path)
        self._leave(call)
        return names

    def read_file(self, path: str) -> bytes:
        call = FsCall("read", os.path.abspath(path))
        self._enter(call)
        with self._lock:
            self._check_power(call)
            with open(path, "rb") as f:
                data = f.read()
        self._leave(call)
        return data

    def open_read(self, path: str) -> ReadHandle:
        path = os.path.abspath(path)
        call = FsCall("open", path)
        self._enter(call)
        with self._lock:
            self._check_power(call)
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            handle = FaultyReadHandle(self, path, fd, self._generation)
        self._leave(call)
        return handle

    def open_write(self, path: str, *, create: bool) -> WriteHandle:
        path = os.path.abspath(path)
        call = FsCall("create" if create else "open", path)
        self._enter(call)
        with self._lock:
            self._check_power(call)
            d, name = self._dir_of(path)
            if create:
                fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC | os.O_CREAT | os.O_EXCL, 0o644)
                node = self._new_node(path, bytearray())
                self._change(d, ((name, node),))
            else:
                fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
                found = self._lookup(d, name, path)
                assert found is not None, f"{path} opened but not modelled"
                node = found
                self._load(node)
            handle = FaultyWriteHandle(self, node, path, fd, self._generation)
        self._leave(call)
        return handle

    def rename(self, src: str, dst: str) -> None:
        src, dst = os.path.abspath(src), os.path.abspath(dst)
        call = FsCall("rename", src, target=dst)
        self._enter(call)
        with self._lock:
            self._check_power(call)
            sd, sname = self._dir_of(src)
            dd, dname = self._dir_of(dst)
            node = self._lookup(sd, sname, src)
            replaced = self._lookup(dd, dname, dst)
            if replaced is not None and replaced is not node:
                self._load(replaced)  # its bytes vanish from the real disk now
            os.rename(src, dst)
            if node is not None:
                node.path = dst
                if replaced is not None and replaced is not node:
                    replaced.path = None
                if sd is dd:
                    self._change(sd, ((sname, None), (dname, node)))
                else:
                    self._change(sd, ((sname, None),))
                    self._change(dd, ((dname, node),))
        self._leave(call)

    def unlink(self, path: str) -> None:
        path = os.path.abspath(path)
        call = FsCall("unlink", path)
        self._enter(call)
        with self._lock:
            self._check_power(call)
            d, name = self._dir_of(path)
            node = self._lookup(d, name, path)
            if node is not None:
                self._load(node)  # an unsynced unlink is undone by a power cut
            os.unlink(path)
            if node is not None:
                node.path = None
                self._change(d, ((name, None),))
        self._leave(call)

    def fsync_dir(self, path: str) -> None:
        path = os.path.abspath(path)
        call = FsCall("fsync_dir", path)
        self._enter(call)
        with self._lock:
            self._check_power(call)
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            d = self._dir(path)
            for change in d.changes:
                _apply_dir_change(d.durable, change)
            d.changes.clear()
        self._leave(call)

    def exists(self, path: str) -> bool:
        call = FsCall("exists", os.path.abspath(path))
        self._enter(call)
        with self._lock:
            self._check_power(call)
            found = os.path.exists(path)
        self._leave(call)
        return found

    def makedirs(self, path: str) -> None:
        call = FsCall("makedirs", os.path.abspath(path))
        self._enter(call)
        with self._lock:
            self._check_power(call)
            os.makedirs(path, exist_ok=True)
        self._leave(call)

    # -- handle operations --------------------------------------------------------------------

    def _pwrite(self, handle: FaultyWriteHandle, data: Buffer, offset: int) -> int:
        payload = bytes(data)
        call = FsCall("write", handle.path, handle.file_id, offset=offset, nbytes=len(payload))
        fault = self._enter(call, handle._generation, raise_fault=False)
        with self._lock:
            self._check_handle(handle._generation, call)
            if fault is not None:
                if fault.partial > 0:
                    self._write_real(handle, payload[: fault.partial], offset)
                raise _fault_error(fault, call)
            written = self._write_real(handle, payload, offset)
        self._leave(call)
        return written

    def _write_real(self, handle: FaultyWriteHandle, data: bytes, offset: int) -> int:
        written = os.pwrite(handle.fd, data, offset)
        handle.node.pending.append(_Write(offset, data[:written]))
        return written

    def _sync(self, handle: FaultyWriteHandle, op: Literal["fdatasync", "fsync"]) -> None:
        call = FsCall(op, handle.path, handle.file_id)
        fault = self._enter(call, handle._generation, raise_fault=False)
        with self._lock:
            self._check_handle(handle._generation, call)
            node = handle.node
            if fault is not None:
                # Linux marks the dirty pages clean after a failed writeback: those bytes stay
                # readable but no later fsync writes them. Forget them, so a power cut loses them.
                node.pending.clear()
                raise _fault_error(fault, call)
            if op == "fsync":
                os.fsync(handle.fd)
            else:
                os.fdatasync(handle.fd)
            self._persist(node)
        self._leave(call)

    def _truncate(self, handle: FaultyWriteHandle, size: int) -> None:
        call = FsCall("truncate", handle.path, handle.file_id, nbytes=size)
        self._enter(call, handle._generation)
        with self._lock:
            self._check_handle(handle._generation, call)
            os.ftruncate(handle.fd, size)
            handle.node.pending.append(_Truncate(size))
        self._leave(call)

    # -- plumbing -----------------------------------------------------------------------------

    def _enter(
        self, call: FsCall, generation: int | None = None, *, raise_fault: bool = True
    ) -> Fault | None:
        """Record ``call``, run the hook, and pick the fault that fires for it, if any."""
        with self._lock:
            self._check_handle(generation, call)
            self.calls.append(call)
        hook = self.hook
        if hook is not None:
            hook(call, "before")
        with self._lock:
            self._check_handle(generation, call)
            fault = next((f for f in self._faults if f.fire(call)), None)
        if fault is not None and raise_fault:
            raise _fault_error(fault, call)
        return fault

    def _leave(self, call: FsCall) -> None:
        hook = self.hook
        if hook is not None:
            hook(call, "after")

    def _is_dead(self, generation: int) -> bool:
        return generation != self._generation

    def _check_power(self, call: FsCall) -> None:
        if not self._powered:
            raise PowerLossError(f"{call.op} {call.path}")

    def _check_handle(self, generation: int | None, call: FsCall) -> None:
        """Raise if the power is off, or if the handle opened in ``generation`` died."""
        self._check_power(call)
        if generation is not None and generation != self._generation:
            raise PowerLossError(f"{call.op} {call.path}: handle died in a power cut")

    def _dir(self, path: str) -> _Dir:
        d = self._dirs.get(path)
        if d is None:
            d = self._dirs[path] = _Dir()
        return d

    def _dir_of(self, path: str) -> tuple[_Dir, str]:
        parent, name = os.path.split(path)
        return self._dir(parent), name

    def _new_node(self, path: str, durable: bytearray | None) -> _Node:
        node = _Node(self._next_id, path, durable)
        self._next_id += 1
        return node

    def _lookup(self, d: _Dir, name: str, path: str) -> _Node | None:
        """The file currently named ``name``; a regular file not modelled yet is adopted as
        durable (it was there before the layer looked)."""
        node = d.current.get(name)
        if node is None and os.path.isfile(path):
            node = self._new_node(path, None)
            d.current[name] = node
            if name not in d.durable:
                d.durable[name] = node
        return node

    def _change(self, d: _Dir, change: _DirChange) -> None:
        d.changes.append(change)
        _apply_dir_change(d.current, change)

    def _load(self, node: _Node) -> None:
        """Copy a found-on-disk file's content into the model before it is changed or removed."""
        if node.durable is None:
            assert node.path is not None
            with open(node.path, "rb") as f:
                node.durable = bytearray(f.read())

    def _durable_bytes(self, node: _Node) -> bytes:
        self._load(node)
        assert node.durable is not None
        return bytes(node.durable)

    def _persist(self, node: _Node) -> None:
        self._load(node)
        assert node.durable is not None
        for change in node.pending:
            _apply_change(node.durable, change)
        node.pending.clear()

    def _plan_cut(
        self, rng: random.Random | None, keep_dir_changes: bool
    ) -> dict[str, _Node | None]:
        """Path -> the file it holds after the cut (None: no file) for every modelled name."""
        plan: dict[str, _Node | None] = {}
        for dir_path, d in self._dirs.items():
            entries = dict(d.durable)
            if rng is not None and keep_dir_changes and d.changes:
                for change in d.changes[: rng.randint(0, len(d.changes))]:
                    _apply_dir_change(entries, change)
            names = set(d.current) | set(d.durable) | set(entries)
            for change in d.changes:
                names.update(name for name, _ in change)
            for name in sorted(names):
                plan[os.path.join(dir_path, name)] = entries.get(name)
        return plan


def _apply_dir_change(entries: dict[str, _Node], change: _DirChange) -> None:
    for name, node in change:
        if node is None:
            entries.pop(name, None)
        else:
            entries[name] = node


def _apply_change(content: bytearray, change: _Change) -> None:
    if isinstance(change, _Truncate):
        if change.size < len(content):
            del content[change.size :]
        else:
            content.extend(bytes(change.size - len(content)))
        return
    end = change.offset + len(change.data)
    if change.offset > len(content):
        content.extend(bytes(change.offset - len(content)))
    content[change.offset : end] = change.data


def _surviving_content(
    durable: bytes,
    pending: list[_Change],
    rng: random.Random | None,
    keep_torn_prefix: bool,
    sector_size: int | None,
) -> bytes:
    """The bytes a file holds after a power cut (see :meth:`FaultyFileLayer.power_cut`)."""
    content = bytearray(durable)
    if rng is None or not pending:
        return bytes(content)
    if sector_size is not None:
        for change in pending:
            if isinstance(change, _Truncate):
                if rng.random() < 0.5:
                    _apply_change(content, change)
                continue
            end = change.offset + len(change.data)
            start = change.offset
            while start < end:
                stop = min(end, (start // sector_size + 1) * sector_size)
                if rng.random() < 0.5:
                    piece = change.data[start - change.offset : stop - change.offset]
                    _apply_change(content, _Write(start, piece))
                start = stop
        return bytes(content)
    keep = rng.randint(0, len(pending))
    for change in pending[:keep]:
        _apply_change(content, change)
    if keep_torn_prefix and keep < len(pending):
        torn = pending[keep]
        if isinstance(torn, _Write) and torn.data:
            cut = rng.randrange(len(torn.data))
            _apply_change(content, _Write(torn.offset, torn.data[:cut]))
    return bytes(content)


def _overwrite(path: str, data: bytes) -> None:
    """Make the real file at ``path`` hold exactly ``data`` (in place, keeping the inode)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(data)
        done = 0
        while done < len(view):
            done += os.pwrite(fd, view[done:], done)
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)


def _fault_error(fault: Fault, call: FsCall) -> OSError:
    return OSError(fault.error, f"{os.strerror(fault.error)} (injected into {call.op})", call.path)


__all__ = [
    "MUTATING_OPS",
    "SYNC_OPS",
    "Fault",
    "FaultyFileLayer",
    "FaultyReadHandle",
    "FaultyWriteHandle",
    "FsCall",
    "FsOp",
    "Hook",
    "Phase",
    "PowerLossError",
]
