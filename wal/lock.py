"""One process owns a data directory: an exclusive flock on ``DIR/LOCK`` holding its pid."""

from __future__ import annotations

import contextlib
import fcntl
import os

from wal.errors import LockedError

LOCK_NAME = "LOCK"


class DirectoryLock:
    """Held for the lifetime of a writable WAL; released on close or process death."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.path = os.path.join(directory, LOCK_NAME)
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = read_lock_holder(self.directory)
            os.close(fd)
            raise LockedError(self.directory, holder) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None


def read_lock_holder(directory: str) -> int | None:
    """The pid written in the lock file, if any (informational; the fcntl lock is the truth)."""
    try:
        with open(os.path.join(directory, LOCK_NAME), "rb") as f:
            text = f.read(32).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def is_locked(directory: str) -> bool:
    """True if some process holds the directory's lock right now."""
    path = os.path.join(directory, LOCK_NAME)
    if not os.path.exists(path):
        return False
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)
