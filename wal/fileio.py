"""Every file operation the WAL performs, behind one small interface.

The WAL never calls ``os`` for data files directly: it goes through a :class:`FileLayer`. In
production that is :class:`OsFileLayer`; tests substitute :class:`wal.faultfs.FaultyFileLayer`,
which remembers what was synced so it can simulate a power cut or fail a write or an fsync. This
is the only place a fake may sit (see DEVELOPERS.md).
"""

from __future__ import annotations

import os
from typing import Protocol

Buffer = bytes | bytearray | memoryview


class WriteHandle(Protocol):
    """An open file the WAL writes to."""

    path: str

    def pwrite(self, data: Buffer, offset: int) -> int:
        """Write ``data`` at ``offset``; returns bytes written (may be short)."""
        ...

    def fdatasync(self) -> None: ...

    def fsync(self) -> None: ...

    def truncate(self, size: int) -> None: ...

    def size(self) -> int: ...

    def close(self) -> None: ...


class ReadHandle(Protocol):
    """An open file the WAL reads from."""

    path: str

    def pread(self, size: int, offset: int) -> bytes: ...

    def size(self) -> int: ...

    def close(self) -> None: ...


class FileLayer(Protocol):
    """Directory and file operations used by the writer, reader and recovery."""

    def listdir(self, path: str) -> list[str]: ...

    def read_file(self, path: str) -> bytes: ...

    def open_read(self, path: str) -> ReadHandle: ...

    def open_write(self, path: str, *, create: bool) -> WriteHandle:
        """Open for writing; ``create=True`` creates a new file and fails if it exists."""
        ...

    def rename(self, src: str, dst: str) -> None: ...

    def unlink(self, path: str) -> None: ...

    def fsync_dir(self, path: str) -> None: ...

    def exists(self, path: str) -> bool: ...

    def makedirs(self, path: str) -> None: ...


class OsWriteHandle:
    __slots__ = ("fd", "path")

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self.fd = fd

    def pwrite(self, data: Buffer, offset: int) -> int:
        return os.pwrite(self.fd, data, offset)

    def fdatasync(self) -> None:
        os.fdatasync(self.fd)

    def fsync(self) -> None:
        os.fsync(self.fd)

    def truncate(self, size: int) -> None:
        os.ftruncate(self.fd, size)

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def close(self) -> None:
        os.close(self.fd)


class OsReadHandle:
    __slots__ = ("fd", "path")

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self.fd = fd

    def pread(self, size: int, offset: int) -> bytes:
        return os.pread(self.fd, size, offset)

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def close(self) -> None:
        os.close(self.fd)


class OsFileLayer:
    """The real file layer: plain POSIX calls."""

    def listdir(self, path: str) -> list[str]:
        return os.listdir(path)

    def read_file(self, path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    def open_read(self, path: str) -> ReadHandle:
        return OsReadHandle(path, os.open(path, os.O_RDONLY | os.O_CLOEXEC))

    def open_write(self, path: str, *, create: bool) -> WriteHandle:
        flags = os.O_WRONLY | os.O_CLOEXEC
        if create:
            flags |= os.O_CREAT | os.O_EXCL
        return OsWriteHandle(path, os.open(path, flags, 0o644))

    def rename(self, src: str, dst: str) -> None:
        os.rename(src, dst)

    def unlink(self, path: str) -> None:
        os.unlink(path)

    def fsync_dir(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def makedirs(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)


OS_FILES: FileLayer = OsFileLayer()
