"""Linux AIO fdatasync/fsync: a sync that runs in the kernel while the caller goes on.

An event loop that hands each batch's sync to a thread pays for the hand-off twice: the thread
must win the GIL from the busy loop before it can start (~0.2 ms median at 64 clients here), and
its result must wake the loop again. ``IOCB_CMD_FDSYNC`` (Linux 4.18+) lets the loop submit the
sync itself and learn of its completion from an eventfd it already polls; nothing of ours runs
in between. This module is only the system calls (through ctypes; glibc has no wrappers and
libaio is not a dependency worth adding for four calls); the WAL's rules stay where they are:
a sync that completes with an error fails the writer for good (``SegmentWriter.complete_staged``).

:meth:`LinuxAio.open` returns None where AIO cannot be used (another OS or architecture, a
kernel without it, a seccomp profile that forbids it); the caller then syncs on a thread.
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct
import sys

# io_setup, io_destroy, io_getevents, io_submit
_SYSCALLS = {
    "x86_64": (206, 207, 208, 209),
    "aarch64": (0, 1, 4, 2),  # the generic table (include/uapi/asm-generic/unistd.h)
    "riscv64": (0, 1, 4, 2),
}
IOCB_CMD_FSYNC = 2
IOCB_CMD_FDSYNC = 3
IOCB_FLAG_RESFD = 1
# struct iocb, little-endian: aio_data, aio_key, aio_rw_flags, aio_lio_opcode, aio_reqprio,
# aio_fildes, aio_buf, aio_nbytes, aio_offset, aio_reserved2, aio_flags, aio_resfd.
_IOCB = struct.Struct("<QIIHhIQQqQII")
# struct io_event: data, obj, res, res2.
_EVENT = struct.Struct("<QQqq")
_MAX_EVENTS = 8


class LinuxAio:
    """One AIO context and the eventfd its completions signal. Not thread-safe: one caller."""

    def __init__(self, libc: ctypes.CDLL, calls: tuple[int, int, int, int]) -> None:
        self._libc = libc
        self._setup, self._destroy, self._getevents, self._submit = calls
        self._ctx = ctypes.c_ulong(0)
        if libc.syscall(self._setup, _MAX_EVENTS, ctypes.byref(self._ctx)) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"io_setup: {os.strerror(err)}")
        try:
            self._efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        except OSError:
            libc.syscall(self._destroy, self._ctx)
            raise
        self._iocb = ctypes.create_string_buffer(_IOCB.size)
        self._iocbs = (ctypes.c_void_p * 1)(ctypes.addressof(self._iocb))
        self._events = ctypes.create_string_buffer(_EVENT.size * _MAX_EVENTS)
        self._no_wait = (ctypes.c_long * 2)(0, 0)
        self.in_flight = 0

    @classmethod
    def open(cls) -> LinuxAio | None:
        """A context, or None where Linux AIO is not available here."""
        calls = _SYSCALLS.get(platform.machine())
        if not sys.platform.startswith("linux") or calls is None or sys.byteorder != "little":
            return None
        try:
            return cls(ctypes.CDLL(None, use_errno=True), calls)
        except OSError:
            return None  # ENOSYS (no AIO), EPERM (seccomp), EAGAIN (aio-max-nr reached)

    def fileno(self) -> int:
        """The eventfd to poll: readable once a submitted sync has completed."""
        return self._efd

    def submit_sync(self, fd: int, datasync: bool) -> None:
        """Start an fdatasync (or fsync) of ``fd``; raises OSError if it could not be started
        (nothing was submitted then)."""
        opcode = IOCB_CMD_FDSYNC if datasync else IOCB_CMD_FSYNC
        _IOCB.pack_into(
            self._iocb, 0, fd, 0, 0, opcode, 0, fd, 0, 0, 0, 0, IOCB_FLAG_RESFD, self._efd
        )
        if self._libc.syscall(self._submit, self._ctx, 1, self._iocbs) != 1:
            err = ctypes.get_errno()
            raise OSError(err, f"io_submit: {os.strerror(err)}")
        self.in_flight += 1

    def reap(self) -> list[int]:
        """Results of the syncs completed since the last call, in completion order: 0, or a
        negative errno. Never blocks; raises OSError if the context itself fails."""
        try:
            os.eventfd_read(self._efd)
        except BlockingIOError:
            return []
        n = self._libc.syscall(
            self._getevents, self._ctx, 0, _MAX_EVENTS, self._events, self._no_wait
        )
        if n < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"io_getevents: {os.strerror(err)}")
        self.in_flight -= n
        return [_EVENT.unpack_from(self._events, i * _EVENT.size)[2] for i in range(n)]

    def close(self) -> None:
        """Release the context. Only when nothing is in flight: io_destroy waits for every
        submitted request, and one stuck on a failing disk would never let it return."""
        if self._efd < 0:
            return
        if self.in_flight == 0:
            self._libc.syscall(self._destroy, self._ctx)
        os.close(self._efd)
        self._efd = -1
