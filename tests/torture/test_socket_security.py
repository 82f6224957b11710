"""Who may talk to the service: the socket's mode and group, a peer-uid allow-list, no network.

The socket's file mode (``socket_mode``) and owning group (``socket_group``: a name or a gid)
come from settings. With ``allowed_uids`` set, a peer whose uid (SO_PEERCRED) is not listed gets
``forbidden`` (id nil) and is closed, and the others are served as before. Nothing listens on a
network interface except the metrics endpoint, which binds to loopback by default: checked in
/proc/net/{tcp,tcp6,udp,udp6} for the inodes of the server process's sockets.
"""

from __future__ import annotations

import asyncio
import grp
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.protocol import ErrorCode, FrameDecoder
from service.settings import Settings, SettingsError, load_settings
from tests.service.harness import (
    RawConnection,
    ServerProcess,
    make_settings,
    serve,
    short_socket_path,
)


@pytest.fixture
def sock() -> Iterator[str]:
    with short_socket_path() as path:
        yield path


def other_group() -> int | None:
    """A group other than ours that we may chown to (root only), or None."""
    if os.geteuid() != 0:
        return None
    return next((g.gr_gid for g in grp.getgrall() if g.gr_gid != os.getgid()), None)


@pytest.mark.parametrize("by", ["name", "gid", "another gid"])
async def test_the_socket_gets_the_mode_and_group_the_settings_name(
    tmp_path: Path, sock: str, by: str
) -> None:
    gid = os.getgid()
    group = grp.getgrgid(gid).gr_name if by == "name" else str(gid)
    if by == "another gid":
        other = other_group()
        if other is None:
            pytest.skip("chown to another group needs root")
        gid, group = other, str(other)
    settings = make_settings(tmp_path / "data", sock, socket_mode="0640", socket_group=group)
    async with serve(settings):
        st = os.stat(sock)
        assert (st.st_mode & 0o777, st.st_gid) == (0o640, gid)


def test_an_unknown_socket_group_or_a_bad_uid_list_is_refused_at_start() -> None:
    with pytest.raises(SettingsError, match="socket_group"):
        load_settings(env={}, flags={"socket_group": "no-such-group-ackwal"})
    with pytest.raises(SettingsError, match="allowed_uids"):
        load_settings(env={}, flags={"allowed_uids": "1000,root"})
    assert load_settings(env={}, flags={"allowed_uids": " 0, 1000 "}).allowed_uids == " 0, 1000 "


async def test_a_peer_whose_uid_is_not_allowed_gets_forbidden_and_is_closed(
    tmp_path: Path, sock: str
) -> None:
    me = os.getuid()
    settings = make_settings(tmp_path / "data", sock, allowed_uids=f"{me + 1}, {me + 2}")
    async with serve(settings):
        reader, writer = await asyncio.open_unix_connection(sock)
        async with asyncio.timeout(5):
            data = await reader.read()  # the error, then end of stream
        (reply,) = FrameDecoder().feed(data)
        assert isinstance(reply, dict)
        assert (reply["id"], reply["error"]["code"]) == (None, ErrorCode.FORBIDDEN)
        assert str(me) in reply["error"]["message"]
        writer.close()


async def test_a_peer_whose_uid_is_allowed_is_served(tmp_path: Path, sock: str) -> None:
    settings = make_settings(tmp_path / "data", sock, allowed_uids=f"{os.getuid()}")
    async with serve(settings) as service:
        conn = await RawConnection.open(sock)
        reply = await conn.request({"op": "status"})
        assert reply["status"]["connections"] == 1
        await conn.close()
        assert service.server is not None


def inet_sockets(pid: int) -> list[tuple[str, str, str]]:
    """(protocol, local address, state) of every TCP/UDP socket process ``pid`` holds."""
    fd_dir = f"/proc/{pid}/fd"
    inodes = set()
    for name in os.listdir(fd_dir):
        try:
            target = os.readlink(os.path.join(fd_dir, name))
        except FileNotFoundError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        with open(f"/proc/{pid}/net/{proto}") as f:
            next(f)
            for line in f:
                fields = line.split()
                if fields[9] in inodes:
                    found.append((proto, fields[1], fields[3]))
    return found


LOOPBACK = {"tcp": "0100007F", "tcp6": "00000000000000000000000001000000"}
LISTEN = "0A"


class MetricsServer(ServerProcess):
    """The server with its metrics endpoint at ``metrics_addr``."""

    metrics_addr = "127.0.0.1:0"

    def argv(self) -> list[str]:
        argv = super().argv()
        argv[argv.index("--metrics-addr") + 1] = self.metrics_addr
        return argv


@pytest.mark.parametrize("metrics", [True, False], ids=["metrics on", "metrics off"])
async def test_nothing_listens_on_a_network_interface_but_metrics_on_loopback(
    tmp_path: Path, sock: str, metrics: bool
) -> None:
    host, _, _ = Settings().metrics_addr.rpartition(":")
    assert host == "127.0.0.1", "the metrics endpoint must bind to loopback by default"
    server = MetricsServer(tmp_path / "data", sock, tmp_path / "server.log")
    # The default host with an ephemeral port (the default port may be taken on a shared box).
    server.metrics_addr = f"{host}:0" if metrics else ""
    try:
        await server.start_ready()
        assert server.proc is not None
        found = inet_sockets(server.proc.pid)
        if not metrics:
            assert found == []
            return
        assert len(found) == 1, found
        proto, local, state = found[0]
        addr, _, _port = local.partition(":")
        assert state == LISTEN and addr == LOOPBACK[proto], found
    finally:
        server.stop_quietly()
