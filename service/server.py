"""The Unix-socket server: socket set-up, connection registry, ordered shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import grp
import os
import socket
import stat
import struct
from collections import Counter

import structlog

from service.connection import Connection
from service.journal import Journal
from service.settings import Settings, parse_uids
from service.turn import turn_flusher

log = structlog.get_logger("ackwal.server")

_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
SHUTDOWN_LINGER = 0.05  # seconds a connection must stay quiet before shutdown closes it


class SocketInUseError(RuntimeError):
    """Another process answers on the configured socket path."""


def prepare_socket_path(path: str) -> None:
    """Create the socket's directory; remove a stale socket file only if nothing answers on it."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise SocketInUseError(
            f"socket path {path} exists and is not a socket; refusing to remove it"
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(path)
        log.info("server.stale_socket_removed", path=path)
        return
    except OSError as exc:
        raise SocketInUseError(f"cannot probe socket {path}: {exc}") from exc
    finally:
        probe.close()
    raise SocketInUseError(f"another server is listening on {path}")


class Server:
    """Accepts connections on the Unix socket and hands them the journals."""

    def __init__(self, settings: Settings, journals: dict[str, Journal]) -> None:
        self.settings = settings
        self.journals = journals
        self.stopping = False
        self.errors: Counter[str] = Counter()
        self._connections: set[Connection] = set()
        self._server: asyncio.AbstractServer | None = None
        self.socket_path = os.path.abspath(settings.socket_path)
        self._allowed_uids = parse_uids(settings.allowed_uids)
        self._turn = turn_flusher(asyncio.get_running_loop())  # made by Service.start

    def schedule_flush(self, conn: Connection) -> None:
        """Flush ``conn``'s queued replies at the end of this loop turn.

        One loop callback flushes every connection that queued something during the turn
        (service/turn.py): a committed batch answers ~25 connections at 64 clients, and a
        callback each cost more (interleaved rounds at 64 clients: mean 41,500 against 38,000
        acked/s over eight, 39,500 against 37,500 over six).
        """
        self._turn.schedule(conn.flush_scheduled)

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    def register(self, conn: Connection) -> bool:
        if self.stopping or len(self._connections) >= self.settings.max_connections:
            return False
        self._connections.add(conn)
        return True

    def unregister(self, conn: Connection) -> None:
        self._connections.discard(conn)

    def count_error(self, code: str) -> None:
        self.errors[code] += 1

    async def start(self) -> None:
        prepare_socket_path(self.socket_path)
        loop = asyncio.get_running_loop()
        mode = int(self.settings.socket_mode, 8)
        # The socket file gets its mode from the umask at bind time: narrow the umask so it is
        # never, even briefly, more open than socket_mode; chmod then sets it exactly.
        old_umask = os.umask(0o777 & ~mode)
        try:
            self._server = await loop.create_unix_server(
                lambda: Connection(self), self.socket_path, backlog=1024
            )
        finally:
            os.umask(old_umask)
        os.chmod(self.socket_path, mode)
        group = self.settings.socket_group.strip()
        if group:
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
            os.chown(self.socket_path, -1, gid)
        log.info(
            "server.listening",
            socket=self.socket_path,
            mode=self.settings.socket_mode,
            group=group or None,
            allowed_uids=sorted(self._allowed_uids) or None,
        )

    def refused_peer_uid(self, transport: asyncio.BaseTransport) -> int | None:
        """None if the peer may talk to us, else its uid (checked with SO_PEERCRED): with
        ``allowed_uids`` set, file permissions alone do not decide who may append."""
        if not self._allowed_uids:
            return None
        sock = transport.get_extra_info("socket")
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
        _pid, uid, _gid = _UCRED.unpack(creds)
        return None if uid in self._allowed_uids else int(uid)

    async def stop_accepting(self) -> None:
        """Step one of shutdown: no new connections; every new request gets shutting_down."""
        self.stopping = True
        if self._server is not None:
            self._server.close()

    async def close_connections(self, timeout: float) -> None:
        """Last step: flush replies, then close every connection (abort after ``timeout``).

        Requests a client sent before it saw ``shutting_down`` may still be arriving: each
        connection is closed only once nothing arrived on it for ``SHUTDOWN_LINGER`` seconds,
        so that those requests are answered instead of being lost with the connection.
        """
        loop = asyncio.get_running_loop()
        linger_until = loop.time() + timeout / 2
        while loop.time() < linger_until and any(
            loop.time() - c.last_read < SHUTDOWN_LINGER for c in self._connections
        ):
            await asyncio.sleep(SHUTDOWN_LINGER / 5)
        for conn in list(self._connections):
            conn.flush_now()
            if conn.transport is not None:
                conn.transport.close()
        deadline = asyncio.get_running_loop().time() + timeout
        while self._connections and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        for conn in list(self._connections):
            if conn.transport is not None:
                conn.transport.abort()
        if self._server is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):  # not wait_for: see Retention._loop
                    await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
