"""Test harness for the service: a real service (in-process or a subprocess), raw frames.

Everything is real: Unix sockets, files and fdatasync. Socket paths live in a short temporary
directory because a Unix socket path must fit in 108 bytes and pytest's ``tmp_path`` for a
test named as a sentence does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from service.app import Service
from service.entry import StoredEntry, entry_from_wire
from service.protocol import FrameDecoder, ProtocolError, encode_frame
from service.settings import Settings
from wal import RecordType
from wal.fileio import OS_FILES, FileLayer
from wal.format import SEGMENT_HEADER_SIZE, RecordView, check_record, parse_segment_name

ROOT = Path(__file__).resolve().parents[2]
ACKWAL = str(Path(sys.executable).with_name("ackwal"))
KILL_TIMEOUT = 10.0  # seconds a SIGKILLed child may take to be reaped (D state on a busy disk)


class StepTimeoutError(AssertionError):
    """A test step did not finish in time: the failure names the step instead of a CI stall."""


@contextlib.asynccontextmanager
async def bounded(step: str, seconds: float) -> AsyncIterator[None]:
    """Run the body within ``seconds``, else fail with :class:`StepTimeoutError` naming ``step``.

    ``asyncio.timeout`` and not ``asyncio.wait_for``: on Python 3.11, ``wait_for`` swallows a
    cancellation that arrives in the loop iteration where the awaited operation completes
    (CPython gh-86296, fixed in 3.12), so a task cancelled in that instant runs on.
    """
    timeout = asyncio.timeout(seconds)
    try:
        async with timeout:
            yield
    except TimeoutError:
        if timeout.expired():
            raise StepTimeoutError(f"{step}: not done within {seconds:g}s") from None
        raise


@contextlib.contextmanager
def short_socket_path() -> Iterator[str]:
    """A socket path short enough for AF_UNIX, removed afterwards."""
    directory = tempfile.mkdtemp(prefix="aw-", dir="/tmp")
    try:
        yield os.path.join(directory, "s.sock")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def make_settings(data_dir: Path | str, socket_path: str, **overrides: Any) -> Settings:
    """Small segments (rotation happens in tests), no metrics endpoint, everything else real."""
    values: dict[str, Any] = {
        "data_dir": str(data_dir),
        "socket_path": socket_path,
        "metrics_addr": "",
        "segment_size": 1024 * 1024,
        "max_record_size": 256 * 1024,
        "shutdown_timeout": 5.0,
    }
    values.update(overrides)
    return Settings(**values)


@contextlib.asynccontextmanager
async def serve(settings: Settings, fs: FileLayer = OS_FILES) -> AsyncIterator[Service]:
    """A started service on the running loop; shut down gracefully on exit."""
    service = Service(settings, fs=fs)
    await service.start()
    try:
        yield service
    finally:
        await service.shutdown()


def new_rid() -> bytes:
    return uuid.uuid4().bytes


def command_for(rid: bytes, size: int = 64) -> bytes:
    """Bytes derived from the request id, so a reader can check any record on its own."""
    out = b""
    counter = 0
    while len(out) < size:
        out += hashlib.blake2b(rid + counter.to_bytes(4, "little")).digest()
        counter += 1
    return out[:size]


def response_for(rid: bytes) -> bytes:
    return b"resp:" + rid


class RawConnection:
    """A bare protocol connection: write frames, read decoded replies (no client library)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = FrameDecoder(64 * 1024 * 1024)
        self._ready: list[dict[str, Any] | ProtocolError] = []
        self._next_id = 1000

    @classmethod
    async def open(
        cls, socket_path: str, *, hello: bool = True, timeout: float = 10.0
    ) -> RawConnection:
        async with bounded(f"connecting to {socket_path}", timeout):
            reader, writer = await asyncio.open_unix_connection(socket_path)
        conn = cls(reader, writer)
        if hello:
            reply = await conn.request({"op": "hello", "version": 1})
            assert "error" not in reply, reply
        return conn

    def next_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def send(self, *messages: dict[str, Any]) -> None:
        """Write every message in one ``write`` (they reach the server in one read)."""
        self.writer.write(b"".join(encode_frame(m) for m in messages))

    async def recv(self, timeout: float = 10.0) -> dict[str, Any]:
        while not self._ready:
            # Not asyncio.wait_for: on 3.11 it can swallow the cancellation of a task that
            # loops on recv() (see bounded()), and that task then never ends.
            async with asyncio.timeout(timeout):
                data = await self.reader.read(1 << 20)
            if not data:
                raise ConnectionError("server closed the connection")
            self._ready.extend(self.decoder.feed(data))
        item = self._ready.pop(0)
        assert not isinstance(item, ProtocolError), item
        return item

    async def request(self, message: dict[str, Any]) -> dict[str, Any]:
        message = {"id": self.next_id(), **message}
        self.send(message)
        reply = await self.recv()
        assert reply["id"] == message["id"], reply
        return reply

    async def close(self, timeout: float = 5.0) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):  # TimeoutError included: closing is best effort
            async with asyncio.timeout(timeout):
                await self.writer.wait_closed()


async def read_log(socket_path: str) -> list[dict[str, Any]]:
    """Every record in the log, of every type (entries, run markers...), via the ``read`` op."""
    conn = await RawConnection.open(socket_path)
    records: list[dict[str, Any]] = []
    try:
        while True:
            from_seq = records[-1]["seq"] + 1 if records else 1
            reply = await conn.request({"op": "read", "from_seq": from_seq, "limit": 10_000})
            if not reply["records"]:
                return records
            records.extend(reply["records"])
    finally:
        await conn.close()


def entries_of(records: list[dict[str, Any]]) -> list[StoredEntry]:
    """The ENTRY records of :func:`read_log`'s result, decoded."""
    return [entry_from_wire(r) for r in records if r["type"] == RecordType.ENTRY]


def assert_gap_free(records: list[dict[str, Any]]) -> None:
    """Seqs run 1, 2, 3... over every record of the log, entries or not."""
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))


def append_message(rid: bytes, request_id: int, **extra: Any) -> dict[str, Any]:
    return {
        "op": "append",
        "id": request_id,
        "request_id": rid,
        "command_type": "test.cmd",
        "command": command_for(rid),
        "response": response_for(rid),
        **extra,
    }


def batch_positions(data_dir: str | Path) -> dict[int, int]:
    """seq -> batch_pos of every valid record, read straight from the segment files."""
    out: dict[int, int] = {}
    names = sorted(n for n in os.listdir(data_dir) if parse_segment_name(n) is not None)
    for name in names:
        data = Path(data_dir, name).read_bytes()
        off = SEGMENT_HEADER_SIZE
        while True:
            rec = check_record(data, off, 1 << 30)
            if not isinstance(rec, RecordView):
                break
            out[rec.seq] = rec.batch_pos
            off = rec.end
    return out


class ServerProcess:
    """``ackwal serve`` as a child process, the way an operator runs it."""

    def __init__(self, data_dir: Path, socket_path: str, log_path: Path, *sets: str) -> None:
        self.data_dir = data_dir
        self.socket_path = socket_path
        self.log_path = log_path
        self.sets = ("segment_size=1048576", "max_record_size=262144", *sets)
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    def argv(self) -> list[str]:
        argv = [
            ACKWAL,
            "serve",
            "--data-dir",
            str(self.data_dir),
            "--socket",
            self.socket_path,
            "--log-format",
            "json",
            "--metrics-addr",
            "",
        ]
        for item in self.sets:
            argv += ["--set", item]
        return argv

    def start(self) -> None:
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv(), stdout=log, stderr=subprocess.STDOUT, cwd=str(ROOT)
            )

    def log_text(self) -> str:
        """The log lines written by the current (last started) process."""
        with open(self.log_path, "rb") as f:
            f.seek(self._log_offset)
            return f.read().decode(errors="replace")

    async def wait_ready(self, timeout: float = 20.0) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while '"service.ready"' not in self.log_text():
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_text()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"server not ready after {timeout}s:\n{self.log_text()}")
            await asyncio.sleep(0.02)

    async def start_ready(self) -> None:
        self.start()
        await self.wait_ready()

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    async def wait(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"server still running after {timeout}s")
            await asyncio.sleep(0.01)
        return self.proc.returncode

    async def kill9(self) -> None:
        self.signal(signal.SIGKILL)
        assert await self.wait() == -signal.SIGKILL

    def stop_quietly(self) -> None:
        """Clean-up for a failed test: never leave a server behind, never wait forever."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            reap(self.proc, "the server")


def reap(proc: subprocess.Popen[bytes], what: str) -> None:
    """Wait (bounded) for a child that was sent SIGKILL; a failure names it and its state."""
    try:
        proc.wait(KILL_TIMEOUT)
    except subprocess.TimeoutExpired:
        try:
            with open(f"/proc/{proc.pid}/status") as f:
                state = next((line.strip() for line in f if line.startswith("State:")), "")
        except OSError:
            state = "State: unknown"
        raise StepTimeoutError(
            f"{what} (pid {proc.pid}) still running {KILL_TIMEOUT:g}s after SIGKILL ({state})"
        ) from None
