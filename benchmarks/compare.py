"""Compare ackwal with the systems an engine might journal to instead: one run, one disk.

Every system gets the same closed loop: each client appends a unique 16-byte request id with a
256-byte command and waits for the ACK before sending the next one; 1, 16, 64 and 256 clients; a
fixed duration per point after a discarded warm-up. Every server is started by this script on
loopback (TCP on 127.0.0.1, or a Unix socket), on the same disk (``--dir``), and stopped by it;
every step is bounded in time. Systems:

  disk             the disk's own limit: write N records' bytes + fdatasync, in a loop
  ackwal-socket    ackwal server, JournalClient.append over the Unix socket
  ackwal-batch     the same with append_batch, 64 entries per request
  ackwal-embedded  the journal in this process (Journal.append), no socket
  postgres         PostgreSQL, INSERT .. ON CONFLICT (request_uuid) DO NOTHING RETURNING, asyncpg
  sqlite           SQLite WAL, synchronous=FULL, one writer thread, one commit per append
  sqlite-grouped   the same writer committing everything queued in one transaction
  nats-default     NATS JetStream publish with ack + Nats-Msg-Id, default fsync policy
                   (ACK before fsync: NOT durable at ACK)
  nats-sync        the same with sync_interval: always (fsync before the ACK)

Opt-in (named in --systems, never in the default run):

  ackwal-nosync    ackwal-socket with sync_mode = none: no fdatasync at all, NOT durable. The
                   socket path's CPU ceiling on this machine: what ackwal-socket would do if the
                   disk cost nothing, measured in the same run as the others
  ackwal-interpreted  ackwal-socket's server run from the sources, not the compiled build that
                   `make bench` (and the image) run: what the mypyc-compiled modules are worth

Then the duplicate-retry scenario: 10% of appends retry an earlier acknowledged request id; each
answer is checked (the original id, flagged duplicate) and the stored records counted afterwards.

Then the ratio rounds (``--rounds``, default 3): the 64-client point of ackwal-socket and of the
systems its targets name (postgres, nats-default) again, interleaved round by round, each on a
freshly started server. In the sweep above those points are minutes apart, and on a shared
machine the disk and the CPUs drift in between: one pair of points gave ratios from 2.9x to
4.6x within three minutes here. The targets are judged on the median of the per-round ratios;
every round is printed and kept in the JSON.

Prints tables and the ratios against the targets, writes compare.json and two PNG plots to --out.

    .venv/bin/python benchmarks/compare.py [--quick] [--systems a,b] [--clients 1,16,64,256]
                                           [--seconds 5] [--rounds 3] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import functools
import json
import logging
import os
import platform
import pwd
import queue
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
import uvloop
from common import (
    COMMAND,
    filesystem_of,
    free_port,
    machine_busy_seconds,
    new_request_id,
    percentile,
    print_table,
    self_cpu_seconds,
    start_server,
    stop_process,
    tree_cpu_seconds,
)

from service.build import describe as describe_build
from service.client import JournalClient
from service.entry import entry_map, entry_request_id, prepare_entry
from service.journal import Journal
from service.settings import load_settings
from wal import RecordType, Wal
from wal.format import RECORD_HEADER_SIZE

SYSTEMS = (
    "disk",
    "ackwal-socket",
    "ackwal-batch",
    "ackwal-embedded",
    "postgres",
    "sqlite",
    "sqlite-grouped",
    "nats-default",
    "nats-sync",
)
OPT_IN_SYSTEMS = ("ackwal-nosync", "ackwal-interpreted")
BATCH_ENTRIES = 64  # entries per append_batch request
DUP_FRACTION = 0.10
COMMAND_TYPE = "NewOrder"
START_TIMEOUT = 120.0  # seconds for a server to start (initdb included)
STOP_TIMEOUT = 30.0
CONNECT_CONCURRENCY = 32

Result = tuple[int, bool]  # (id the system gave the entry, answered as a duplicate)
Send = Callable[[bytes], Awaitable[object]]  # one append of one request id, answer unused


# -- workload -------------------------------------------------------------------------------------


@dataclass
class Retries:
    """The duplicate-retry workload: remembers acknowledged ids and checks every answer."""

    fraction: float
    rng: random.Random = field(default_factory=lambda: random.Random(7))
    history: list[tuple[bytes, int]] = field(default_factory=list)
    unique_acked: int = 0
    retries_acked: int = 0
    wrong_answers: int = 0

    def next(self, k: int) -> list[tuple[bytes, int | None]]:
        out: list[tuple[bytes, int | None]] = []
        for _ in range(k):
            if self.history and self.rng.random() < self.fraction:
                out.append(self.rng.choice(self.history))
            else:
                out.append((new_request_id(), None))
        return out

    def check(self, sent: list[tuple[bytes, int | None]], results: list[Result]) -> None:
        for (rid, expected), (got, duplicate) in zip(sent, results, strict=True):
            if expected is None:
                if duplicate:
                    self.wrong_answers += 1
                else:
                    self.unique_acked += 1
                    self.history.append((rid, got))
            else:
                self.retries_acked += 1
                if not duplicate or got != expected:
                    self.wrong_answers += 1


@dataclass
class Measured:
    acked: int
    latencies: list[float]  # ms, sorted
    seconds: float
    server_cpu: float | None  # cores
    client_cpu: float  # cores used by this process
    other_cpu: float  # cores used by everything else on the machine


class CpuProbe:
    """CPU of the server tree, of this process and of the whole machine, between two samples."""

    def __init__(self, server_pid: int | None) -> None:
        self.server_pid = server_pid
        self.samples: list[tuple[float, float, float, float]] = []

    def sample(self) -> None:
        server = tree_cpu_seconds(self.server_pid) if self.server_pid else 0.0
        self.samples.append(
            (time.perf_counter(), server, self_cpu_seconds(), machine_busy_seconds())
        )

    def cores(self) -> tuple[float | None, float, float]:
        (t0, s0, c0, m0), (t1, s1, c1, m1) = self.samples[0], self.samples[-1]
        wall = max(t1 - t0, 1e-9)
        server = (s1 - s0) / wall if self.server_pid else None
        client = (c1 - c0) / wall
        other = max(0.0, (m1 - m0) / wall - client - (server or 0.0))
        return server, client, other


def new_ids(k: int) -> list[tuple[bytes, int | None]]:
    return [(new_request_id(), None) for _ in range(k)]


# -- systems --------------------------------------------------------------------------------------


class Client:
    async def append(self, rids: list[bytes]) -> list[Result]:
        raise NotImplementedError

    def sender(self) -> Send | None:
        """The system's own call for one append whose answer is not checked (no retries), or
        None to go through :meth:`append`. Without this script's list in and list of tuples
        out per call: at ~65,000 appends/s those layers cost the one client process ~4 % of
        the fastest system's rate (docs/PERFORMANCE.md). Every single-entry system has one."""
        return None

    async def close(self) -> None:
        return None


class System:
    """One system under test: started, measured point by point, stopped by this script."""

    name = ""
    label = ""
    durable_at_ack = True
    dedup = ""  # how it answers a retried request id without storing it twice
    entries_per_request = 1

    def server_pid(self) -> int | None:
        return None

    async def start(self, work: str) -> None:
        raise NotImplementedError

    async def connect(self) -> Client:
        raise NotImplementedError

    async def stored(self) -> tuple[int, int | None]:
        """(records stored, distinct request ids among them, if countable)."""
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def fresh(self, work: str) -> None:
        """An empty store for the duplicate scenario, so that its records can be counted."""
        await self.stop()
        await self.start(work)

    async def point(
        self, n: int, seconds: float, warmup: float, retries: Retries | None = None
    ) -> Measured:
        clients: list[Client] = []
        sem = asyncio.Semaphore(CONNECT_CONCURRENCY)

        async def connect_one() -> None:
            async with sem:
                clients.append(await self.connect())

        try:
            await asyncio.gather(*(connect_one() for _ in range(n)))
            return await closed_loop(
                clients, self.entries_per_request, seconds, warmup, self.server_pid(), retries
            )
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    asyncio.gather(*(c.close() for c in clients), return_exceptions=True), 30
                )


async def closed_loop(
    clients: list[Client],
    entries: int,
    seconds: float,
    warmup: float,
    server_pid: int | None,
    retries: Retries | None,
) -> Measured:
    """Every client appends, waits for the ACK, appends again; only the window is counted."""
    loop = asyncio.get_running_loop()
    start = loop.time() + warmup
    stop = start + seconds
    probe = CpuProbe(server_pid)
    loop.call_at(start, probe.sample)
    loop.call_at(stop, probe.sample)
    latencies: list[float] = []
    acked = 0
    perf = time.perf_counter

    async def one(client: Client) -> None:
        nonlocal acked
        send = client.sender() if entries == 1 and retries is None else None
        while send is not None:
            t0 = perf()
            await send(new_request_id())
            t1 = perf()
            now = loop.time()
            if now >= stop:
                return
            if now >= start:
                latencies.append((t1 - t0) * 1000)
                acked += 1
        while True:
            sent = retries.next(entries) if retries else new_ids(entries)
            t0 = perf()
            results = await client.append([rid for rid, _ in sent])
            t1 = perf()
            if retries:
                retries.check(sent, results)
            now = loop.time()
            if now >= stop:
                return
            if now >= start:
                latencies.append((t1 - t0) * 1000)
                acked += entries

    await asyncio.gather(*(one(c) for c in clients))
    if len(probe.samples) < 2:
        probe.sample()
    latencies.sort()
    server, client, other = probe.cores()
    return Measured(acked, latencies, seconds, server, client, other)


def ackwal_record_bytes() -> int:
    """Bytes ackwal writes for one workload append (header + msgpack payload)."""
    entry = prepare_entry(entry_map(new_request_id(), COMMAND_TYPE, COMMAND), 0, 4 << 20)
    return int(RECORD_HEADER_SIZE) + len(entry.payload)


def count_wal_entries(path: str) -> tuple[int, int]:
    """(ENTRY records, distinct request ids) read back from the WAL files themselves."""
    ids: set[bytes] = set()
    n = 0
    with Wal.open(path, readonly=True) as wal:
        if wal.last_seq == 0:
            return 0, 0
        for rec in wal.read(wal.first_seq):
            if rec.type == RecordType.ENTRY:
                n += 1
                ids.add(entry_request_id(rec.payload)[0])
    return n, len(ids)


class Disk(System):
    """The ceiling: what the disk does with one write + fdatasync per group of N appends."""

    name = "disk"
    label = "disk limit (write N records + fdatasync)"
    size = 64 * 1024 * 1024  # one segment, zero-filled ahead like ackwal's spare segment

    def __init__(self) -> None:
        self.fd = -1
        self.record_bytes = ackwal_record_bytes()

    async def start(self, work: str) -> None:
        def prepare() -> int:
            fd = os.open(os.path.join(work, "raw.bin"), os.O_CREAT | os.O_RDWR, 0o644)
            zeros = bytes(1024 * 1024)
            for off in range(0, self.size, len(zeros)):
                os.pwrite(fd, zeros, off)
            os.fsync(fd)
            return fd

        self.fd = await asyncio.to_thread(prepare)

    async def point(
        self, n: int, seconds: float, warmup: float, retries: Retries | None = None
    ) -> Measured:
        return await asyncio.to_thread(self._loop, n, seconds, warmup)

    def _loop(self, n: int, seconds: float, warmup: float) -> Measured:
        data = os.urandom(n * self.record_bytes)
        fd, perf = self.fd, time.perf_counter
        probe = CpuProbe(None)
        start = perf() + warmup
        stop = start + seconds
        latencies: list[float] = []
        acked = off = 0
        while True:
            if off + len(data) > self.size:
                off = 0
            t0 = perf()
            os.pwrite(fd, data, off)
            os.fdatasync(fd)
            t1 = perf()
            off += len(data)
            if t1 >= stop:
                break
            if t1 >= start:
                if not probe.samples:
                    probe.sample()
                latencies.append((t1 - t0) * 1000)
                acked += n
        probe.sample()
        latencies.sort()
        _, client, other = probe.cores()
        return Measured(acked, latencies, seconds, None, client, other)

    async def stop(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class AckwalClient(Client):
    def __init__(self, client: JournalClient, batch: bool) -> None:
        self.client = client
        self.batch = batch

    async def append(self, rids: list[bytes]) -> list[Result]:
        if self.batch:
            results = await self.client.append_batch(
                [{"request_id": r, "command_type": COMMAND_TYPE, "command": COMMAND} for r in rids]
            )
            return [(r.seq, r.duplicate) for r in results]
        r = await self.client.append(rids[0], COMMAND_TYPE, COMMAND)
        return [(r.seq, r.duplicate)]

    def sender(self) -> Send | None:
        if self.batch:
            return None
        return functools.partial(self.client.append, command_type=COMMAND_TYPE, command=COMMAND)

    async def close(self) -> None:
        await self.client.close()


ACKWAL_DEDUP = (
    "idempotency index request_id -> seq in memory, rebuilt from the WAL at start (24 h window): "
    "a committed id is answered with its original seq and stored response, an in-flight one "
    "waits for the original; nothing is written"
)


class AckwalSocket(System):
    durable_at_ack = True
    dedup = ACKWAL_DEDUP

    def __init__(
        self, batch: bool, sync_mode: str = "fdatasync", interpreted: bool = False
    ) -> None:
        self.batch = batch
        self.sync_mode = sync_mode
        self.interpreted = interpreted
        if interpreted:
            self.name = "ackwal-interpreted"
            self.label = "ackwal, append over socket, the server interpreted (not compiled)"
        elif sync_mode == "none":
            self.name = "ackwal-nosync"
            self.label = "ackwal, append over socket WITHOUT fdatasync (ceiling, NOT durable)"
            self.durable_at_ack = False
        elif batch:
            self.name = "ackwal-batch"
            self.label = f"ackwal, append_batch of {BATCH_ENTRIES} (entries/s)"
        else:
            self.name = "ackwal-socket"
            self.label = "ackwal, append over socket"
        self.entries_per_request = BATCH_ENTRIES if batch else 1
        self.proc: subprocess.Popen[bytes] | None = None
        self.data = self.sock = self.sockdir = ""

    def server_pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    async def start(self, work: str) -> None:
        self.data = os.path.join(work, "data")
        # A Unix socket path must stay under 108 bytes: keep it short, away from --dir.
        self.sockdir = tempfile.mkdtemp(prefix="ackwal-cmp-")
        self.sock = os.path.join(self.sockdir, "ackwal.sock")
        self.proc = await asyncio.to_thread(
            start_server,
            self.data,
            self.sock,
            self.sync_mode,
            START_TIMEOUT,
            interpreted=self.interpreted,
        )

    async def connect(self) -> Client:
        return AckwalClient(await JournalClient.connect(self.sock, reconnect=False), self.batch)

    async def stored(self) -> tuple[int, int | None]:
        await self.stop()  # count from the files once the server let go of them
        return await asyncio.to_thread(count_wal_entries, self.data)

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            await asyncio.to_thread(stop_process, proc, signal.SIGTERM, STOP_TIMEOUT)
        if self.sockdir:
            shutil.rmtree(self.sockdir, ignore_errors=True)
            self.sockdir = ""


class EmbeddedClient(Client):
    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    async def append(self, rids: list[bytes]) -> list[Result]:
        r = await self.journal.append(rids[0], COMMAND_TYPE, COMMAND)
        return [(r.seq, r.duplicate)]

    def sender(self) -> Send:
        return functools.partial(self.journal.append, command_type=COMMAND_TYPE, command=COMMAND)


class AckwalEmbedded(System):
    name = "ackwal-embedded"
    label = "ackwal, embedded (in-process)"
    dedup = ACKWAL_DEDUP

    def __init__(self) -> None:
        self.journal: Journal | None = None
        self.data = ""

    async def start(self, work: str) -> None:
        self.data = os.path.join(work, "data")
        settings = load_settings(env={}, flags={"data_dir": self.data, "socket_path": "unused"})
        self.journal = await Journal.open(settings)

    async def connect(self) -> Client:
        assert self.journal is not None
        return EmbeddedClient(self.journal)

    async def stored(self) -> tuple[int, int | None]:
        await self.stop()
        return await asyncio.to_thread(count_wal_entries, self.data)

    async def stop(self) -> None:
        journal, self.journal = self.journal, None
        if journal is not None:
            await asyncio.wait_for(journal.close(), STOP_TIMEOUT)


class PostgresClient(Client):
    def __init__(self, conn: Any, table: str) -> None:
        self.conn = conn
        self.insert = (
            f"INSERT INTO {table} (request_uuid, command_type, command) VALUES ($1, $2, $3) "
            "ON CONFLICT (request_uuid) DO NOTHING RETURNING command_id"
        )
        self.select = f"SELECT command_id FROM {table} WHERE request_uuid = $1"

    async def append(self, rids: list[bytes]) -> list[Result]:
        rid = uuid.UUID(bytes=rids[0])
        command_id = await self.conn.fetchval(self.insert, rid, COMMAND_TYPE, COMMAND)
        if command_id is not None:
            return [(command_id, False)]
        return [(await self.conn.fetchval(self.select, rid), True)]

    def sender(self) -> Send:
        fetchval, insert = self.conn.fetchval, self.insert

        def send(rid: bytes) -> Awaitable[object]:
            return fetchval(insert, uuid.UUID(bytes=rid), COMMAND_TYPE, COMMAND)  # type: ignore[no-any-return]

        return send

    async def close(self) -> None:
        await self.conn.close(timeout=10)


class Postgres(System):
    name = "postgres"
    label = "PostgreSQL, INSERT .. ON CONFLICT DO NOTHING"
    dedup = (
        "UNIQUE index on request_uuid: INSERT .. ON CONFLICT (request_uuid) DO NOTHING returns no "
        "row for a known id (after waiting for a concurrent insert of it to commit), then a "
        "SELECT fetches the original command_id"
    )
    user = "postgres"  # the cluster's OS user when this script runs as root (initdb refuses root)

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.table = "journal"
        self.settings: dict[str, str] = {}

    def server_pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def _as_user(self) -> dict[str, Any]:
        if os.geteuid() != 0:
            return {}
        pw = pwd.getpwnam(self.user)
        return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}

    async def start(self, work: str) -> None:
        pgdata = os.path.join(work, "pgdata")
        os.mkdir(pgdata, 0o700)
        as_user = self._as_user()
        if as_user:
            os.chmod(work, 0o755)
            os.chown(pgdata, as_user["user"], as_user["group"])
        log_path = os.path.join(work, "postgres.log")
        with open(log_path, "wb") as log_file:

            def initdb() -> None:
                subprocess.run(
                    [
                        *(_pg_bin("initdb"), "-D", pgdata, "-U", "bench", "--auth=trust"),
                        *("--encoding=UTF8", "--no-locale"),
                    ],
                    stdout=log_file,
                    stderr=log_file,
                    check=True,
                    timeout=START_TIMEOUT,
                    cwd=pgdata,
                    **as_user,
                )

            await asyncio.to_thread(initdb)
            self.port = free_port()
            options = {
                "listen_addresses": "127.0.0.1",
                "unix_socket_directories": "",
                "fsync": "on",
                "synchronous_commit": "on",
                "max_connections": "300",
            }
            args = [_pg_bin("postgres"), "-D", pgdata, "-p", str(self.port)]
            for key, value in options.items():
                args += ["-c", f"{key}={value}"]
            self.proc = subprocess.Popen(
                args,
                stdout=log_file,
                stderr=log_file,
                cwd=pgdata,
                process_group=0,
                **as_user,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                conn = await self._conn(timeout=2)
                break
            except Exception as exc:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    with open(log_path, errors="replace") as f:
                        raise RuntimeError(
                            f"postgres did not start ({exc}): {f.read()[-2000:]}"
                        ) from None
                await asyncio.sleep(0.2)
        try:
            await self._create(conn)
            for key in (
                "server_version",
                "fsync",
                "synchronous_commit",
                "wal_sync_method",
                "full_page_writes",
                "commit_delay",
                "shared_buffers",
            ):
                self.settings[key] = await conn.fetchval(f"SHOW {key}")
        finally:
            await conn.close()

    async def _conn(self, timeout: float = 30) -> Any:
        import asyncpg

        return await asyncpg.connect(
            host="127.0.0.1", port=self.port, user="bench", database="postgres", timeout=timeout
        )

    async def _create(self, conn: Any) -> None:
        await conn.execute(
            f"CREATE TABLE {self.table} (command_id bigserial PRIMARY KEY, "
            "request_uuid uuid NOT NULL UNIQUE, command_type text NOT NULL, "
            "command bytea NOT NULL, received timestamptz NOT NULL DEFAULT now())"
        )

    async def fresh(self, work: str) -> None:
        self.table = "journal_dup"  # a new table in the same cluster: initdb is slow
        conn = await self._conn()
        try:
            await self._create(conn)
        finally:
            await conn.close()

    async def connect(self) -> Client:
        return PostgresClient(await self._conn(), self.table)

    async def stored(self) -> tuple[int, int | None]:
        conn = await self._conn()
        try:
            row = await conn.fetchrow(
                f"SELECT count(*), count(DISTINCT request_uuid) FROM {self.table}"
            )
        finally:
            await conn.close()
        return int(row[0]), int(row[1])

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:  # SIGINT: PostgreSQL's "fast" shutdown
            await asyncio.to_thread(stop_process, proc, signal.SIGINT, STOP_TIMEOUT)


def _pg_bin(name: str) -> str:
    for d in ("/usr/local/bin", "/usr/lib/postgresql/15/bin"):
        path = os.path.join(d, name)
        if os.access(path, os.X_OK):
            return path
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"PostgreSQL's {name} was not found in /usr/local/bin or PATH")
    return found


class SqliteClient(Client):
    def __init__(self, system: Sqlite) -> None:
        self.system = system

    async def append(self, rids: list[bytes]) -> list[Result]:
        fut: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self.system.requests.put((rids[0], fut))
        return [await fut]

    def sender(self) -> Send:
        loop = asyncio.get_running_loop()
        put = self.system.requests.put

        def send(rid: bytes) -> Awaitable[object]:
            fut: asyncio.Future[Result] = loop.create_future()
            put((rid, fut))
            return fut

        return send


class Sqlite(System):
    """SQLite in WAL mode with synchronous=FULL; one writer thread owns the connection."""

    dedup = (
        "UNIQUE constraint on request_uuid: INSERT .. ON CONFLICT (request_uuid) DO NOTHING "
        "RETURNING gives no row for a known id, then a SELECT fetches the original command_id; "
        "the single writer serialises everything"
    )
    max_group = 4096

    def __init__(self, grouped: bool) -> None:
        self.grouped = grouped
        self.name = "sqlite-grouped" if grouped else "sqlite"
        self.label = (
            "SQLite WAL, FULL, grouped commits"
            if grouped
            else "SQLite WAL, FULL, commit per append"
        )
        self.requests: queue.SimpleQueue[tuple[bytes, asyncio.Future[Result]] | None] = (
            queue.SimpleQueue()
        )
        self.thread: threading.Thread | None = None
        self.path = ""

    async def start(self, work: str) -> None:
        self.path = os.path.join(work, "journal.db")
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        self.thread = threading.Thread(
            target=self._writer, args=(loop, ready), name=self.name, daemon=True
        )
        self.thread.start()
        await asyncio.wait_for(ready, START_TIMEOUT)

    def _writer(self, loop: asyncio.AbstractEventLoop, ready: asyncio.Future[None]) -> None:
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute(
                "CREATE TABLE journal (command_id INTEGER PRIMARY KEY, "
                "request_uuid BLOB NOT NULL UNIQUE, command_type TEXT NOT NULL, "
                "command BLOB NOT NULL)"
            )
        except BaseException as exc:
            loop.call_soon_threadsafe(_set_exception, ready, exc)
            raise
        loop.call_soon_threadsafe(_set_result, ready, None)
        insert = (
            "INSERT INTO journal (request_uuid, command_type, command) VALUES (?, ?, ?) "
            "ON CONFLICT (request_uuid) DO NOTHING RETURNING command_id"
        )
        select = "SELECT command_id FROM journal WHERE request_uuid = ?"
        limit = self.max_group if self.grouped else 1
        running = True
        try:
            while running:
                item = self.requests.get()
                if item is None:
                    break
                group = [item]
                while len(group) < limit:
                    try:
                        nxt = self.requests.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is None:
                        running = False
                        break
                    group.append(nxt)
                answers: list[tuple[asyncio.Future[Result], Result]] = []
                try:
                    db.execute("BEGIN IMMEDIATE")
                    for rid, fut in group:
                        rows = db.execute(insert, (rid, COMMAND_TYPE, COMMAND)).fetchall()
                        if rows:
                            answers.append((fut, (rows[0][0], False)))
                        else:
                            got = db.execute(select, (rid,)).fetchone()[0]
                            answers.append((fut, (got, True)))
                    db.execute("COMMIT")  # returns after the WAL fsync (synchronous=FULL)
                except sqlite3.Error as exc:
                    for _, fut in group:
                        loop.call_soon_threadsafe(_set_exception, fut, exc)
                    raise
                loop.call_soon_threadsafe(_resolve_all, answers)
        finally:
            db.close()

    async def connect(self) -> Client:
        return SqliteClient(self)

    async def stored(self) -> tuple[int, int | None]:
        def count() -> tuple[int, int]:
            with contextlib.closing(sqlite3.connect(self.path)) as db:
                n, distinct = db.execute(
                    "SELECT count(*), count(DISTINCT request_uuid) FROM journal"
                ).fetchone()
            return int(n), int(distinct)

        return await asyncio.to_thread(count)

    async def stop(self) -> None:
        thread, self.thread = self.thread, None
        if thread is not None:
            self.requests.put(None)
            await asyncio.to_thread(thread.join, STOP_TIMEOUT)
            if thread.is_alive():
                raise RuntimeError(f"{self.name} writer did not stop within {STOP_TIMEOUT}s")


def _set_result(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _set_exception(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)


def _resolve_all(answers: list[tuple[asyncio.Future[Result], Result]]) -> None:
    for fut, result in answers:
        if not fut.done():
            fut.set_result(result)


class NatsClient(Client):
    def __init__(self, nc: Any, subject: str) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.subject = subject

    async def append(self, rids: list[bytes]) -> list[Result]:
        ack = await self.js.publish(
            self.subject, COMMAND, timeout=30, headers={"Nats-Msg-Id": rids[0].hex()}
        )
        return [(ack.seq, bool(ack.duplicate))]

    def sender(self) -> Send:
        publish, subject = self.js.publish, self.subject

        def send(rid: bytes) -> Awaitable[object]:
            return publish(subject, COMMAND, timeout=30, headers={"Nats-Msg-Id": rid.hex()})  # type: ignore[no-any-return]

        return send

    async def close(self) -> None:
        await self.nc.close()


class Nats(System):
    dedup = (
        "Nats-Msg-Id header: the stream remembers the ids it stored within duplicate_window "
        "(default 2 min) and acks a repeat with duplicate=true and the original seq, storing "
        "nothing; a retry after the window is stored again"
    )
    stream = "JOURNAL"
    subject = "journal.append"

    def __init__(self, sync_always: bool) -> None:
        self.sync_always = sync_always
        self.name = "nats-sync" if sync_always else "nats-default"
        self.durable_at_ack = sync_always
        self.label = (
            "NATS JetStream, sync_interval: always"
            if sync_always
            else "NATS JetStream, default fsync (NOT durable at ACK)"
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def server_pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    async def start(self, work: str) -> None:
        port = free_port()
        self.url = f"nats://127.0.0.1:{port}"
        conf = os.path.join(work, "nats.conf")
        with open(conf, "w") as f:
            f.write(f'listen: "127.0.0.1:{port}"\n')
            f.write("jetstream {\n")
            f.write(f'  store_dir: "{os.path.join(work, "jetstream")}"\n')
            if self.sync_always:
                f.write("  sync_interval: always\n")
            f.write("}\n")
        log_path = os.path.join(work, "nats.log")
        exe = os.path.join(os.path.dirname(sys.executable), "nats-server")
        if not os.access(exe, os.X_OK):
            exe = shutil.which("nats-server") or exe
        with open(log_path, "wb") as log_file:
            self.proc = subprocess.Popen(
                [exe, "-c", conf],
                stdout=log_file,
                stderr=log_file,
                process_group=0,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                nc = await self._conn()
                js = nc.jetstream()
                await js.add_stream(
                    name=self.stream,
                    subjects=[self.subject],
                    storage="file",
                    num_replicas=1,
                    duplicate_window=120.0,
                )
                await nc.close()
                return
            except Exception as exc:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    with open(log_path, errors="replace") as f:
                        raise RuntimeError(
                            f"nats-server did not start ({exc!r}): {f.read()[-2000:]}"
                        ) from None
                await asyncio.sleep(0.2)

    async def _conn(self) -> Any:
        import nats

        async def quiet(exc: Exception) -> None:
            return None

        return await nats.connect(
            self.url,
            connect_timeout=5,
            allow_reconnect=False,
            max_reconnect_attempts=0,
            error_cb=quiet,
        )

    async def connect(self) -> Client:
        return NatsClient(await self._conn(), self.subject)

    async def stored(self) -> tuple[int, int | None]:
        nc = await self._conn()
        try:
            info = await nc.jetstream().stream_info(self.stream)
        finally:
            await nc.close()
        return int(info.state.messages), None

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            await asyncio.to_thread(stop_process, proc, signal.SIGTERM, STOP_TIMEOUT)


def make_system(name: str) -> System:
    makers: dict[str, Callable[[], System]] = {
        "disk": Disk,
        "ackwal-socket": lambda: AckwalSocket(batch=False),
        "ackwal-batch": lambda: AckwalSocket(batch=True),
        "ackwal-nosync": lambda: AckwalSocket(batch=False, sync_mode="none"),
        "ackwal-interpreted": lambda: AckwalSocket(batch=False, interpreted=True),
        "ackwal-embedded": AckwalEmbedded,
        "postgres": Postgres,
        "sqlite": lambda: Sqlite(grouped=False),
        "sqlite-grouped": lambda: Sqlite(grouped=True),
        "nats-default": lambda: Nats(sync_always=False),
        "nats-sync": lambda: Nats(sync_always=True),
    }
    return makers[name]()


# -- the run --------------------------------------------------------------------------------------


def row_of(system: System, n: int, m: Measured) -> dict[str, Any]:
    lat = m.latencies
    return {
        "system": system.name,
        "clients": n,
        "acked_per_s": round(m.acked / m.seconds),
        "p50_ms": round(percentile(lat, 0.50), 3),
        "p99_ms": round(percentile(lat, 0.99), 3),
        "p999_ms": round(percentile(lat, 0.999), 3),
        "server_cpu": round(m.server_cpu, 2) if m.server_cpu is not None else None,
        "client_cpu": round(m.client_cpu, 2),
        "other_cpu": round(m.other_cpu, 2),
        "requests": len(lat),
        "entries_per_request": system.entries_per_request,
        "durable_at_ack": system.durable_at_ack,
    }


CDF_QUANTILES = (
    [i / 100 for i in range(100)]
    + [0.99 + i / 1000 for i in range(1, 10)]
    + [0.999 + i / 10000 for i in range(1, 10)]
    + [1.0]
)


def cdf_points(lat: list[float]) -> list[list[float]]:
    return [[q, round(percentile(lat, q), 4)] for q in CDF_QUANTILES]


async def bounded(coro: Any, seconds: float, what: str) -> Any:
    try:
        return await asyncio.wait_for(coro, seconds)
    except TimeoutError:
        raise RuntimeError(f"{what} did not finish within {seconds:.0f}s") from None


async def run_started(
    system: System,
    name: str,
    base: str,
    report: dict[str, Any],
    body: Callable[[], Awaitable[None]],
    context: str = "",
) -> None:
    """Start ``system`` in ``base``/main, run ``body``, then stop it and delete ``base``. A
    failure (starting, or in ``body``) is recorded in the report and printed, not raised: the
    other systems still run."""
    prefix = f"{context}: " if context else ""
    try:
        await bounded(system.start(os.path.join(base, "main")), START_TIMEOUT, f"{name} start")
        await body()
    except Exception as exc:
        message = f"{prefix}{type(exc).__name__}: {exc}"
        report["errors"].append({"system": name, "error": message})
        print(f"  {name} FAILED: {message}", flush=True)
        traceback.print_exc()
    finally:
        try:
            await bounded(system.stop(), STOP_TIMEOUT + 10, f"{name} stop")
        except Exception as exc:
            report["errors"].append({"system": name, "error": f"{prefix}stop: {exc}"})
        shutil.rmtree(base, ignore_errors=True)


async def run_system(
    name: str, args: argparse.Namespace, work: str, report: dict[str, Any]
) -> None:
    system = make_system(name)
    base = os.path.join(work, name)
    os.makedirs(os.path.join(base, "main"))
    point_bound = args.warmup + args.seconds + 120
    report["systems"][name] = {
        "label": system.label,
        "durable_at_ack": system.durable_at_ack,
        "dedup": system.dedup or None,
        "entries_per_request": system.entries_per_request,
    }

    async def measure() -> None:
        if isinstance(system, Postgres):
            report["systems"][name]["settings"] = system.settings
        for n in args.clients:
            m = await bounded(
                system.point(n, args.seconds, args.warmup), point_bound, f"{name} at {n} clients"
            )
            row = row_of(system, n, m)
            report["rows"].append(row)
            if n == args.cdf_clients:
                report["cdf"][name] = cdf_points(m.latencies)
            print(_line(row), flush=True)
        if args.dup and system.dedup:
            os.mkdir(os.path.join(base, "dup"))
            await bounded(system.fresh(os.path.join(base, "dup")), START_TIMEOUT, f"{name} fresh")
            retries = Retries(DUP_FRACTION)
            m = await bounded(
                system.point(args.dup_clients, args.seconds, args.warmup, retries),
                point_bound,
                f"{name} duplicate scenario",
            )
            records, distinct = await bounded(system.stored(), 120, f"{name} count")
            row = row_of(system, args.dup_clients, m)
            dup = {
                "system": name,
                "clients": args.dup_clients,
                "acked_per_s": row["acked_per_s"],
                "p99_ms": row["p99_ms"],
                "unique_acked": retries.unique_acked,
                "retries_acked": retries.retries_acked,
                "wrong_answers": retries.wrong_answers,
                "records_stored": records,
                "distinct_ids_stored": distinct,
                "one_record_per_id": records == retries.unique_acked
                and distinct in (None, records)
                and retries.wrong_answers == 0,
            }
            report["duplicates"].append(dup)
            print(
                f"  duplicates {name}: {retries.retries_acked} retries answered, "
                f"{retries.wrong_answers} wrong; {records} records for "
                f"{retries.unique_acked} unique ids -> "
                f"{'OK' if dup['one_record_per_id'] else 'FAILED'}",
                flush=True,
            )

    await run_started(system, name, base, report, measure)


# ackwal-socket and the systems its targets compare it with (TARGETS), in ratio-round order.
RATIO_SYSTEMS = ("ackwal-socket", "postgres", "nats-default")


async def run_round_point(
    name: str, round_no: int, args: argparse.Namespace, work: str, report: dict[str, Any]
) -> dict[str, Any] | None:
    """One system's ratio point in ratio round ``round_no``, on a freshly started server."""
    system = make_system(name)
    base = os.path.join(work, f"{name}-round{round_no}")
    os.makedirs(os.path.join(base, "main"))
    n = args.cdf_clients
    rows: list[dict[str, Any]] = []

    async def measure() -> None:
        m = await bounded(
            system.point(n, args.seconds, args.warmup),
            args.warmup + args.seconds + 120,
            f"{name} at {n} clients, round {round_no}",
        )
        rows.append({**row_of(system, n, m), "round": round_no})
        print(_line(rows[0]), flush=True)

    await run_started(system, name, base, report, measure, f"round {round_no}")
    return rows[0] if rows else None


async def run_ratio_rounds(args: argparse.Namespace, work: str, report: dict[str, Any]) -> None:
    """Round 1 is the sweep's own ratio points; rounds 2.. measure them again, interleaved."""
    names = [s for s in RATIO_SYSTEMS if s in args.systems]
    rounds = report["rounds"]
    rounds.extend(
        {**r, "round": 1}
        for r in report["rows"]
        if r["clients"] == args.cdf_clients and r["system"] in names
    )
    if "ackwal-socket" not in names or len(names) < 2:
        return  # nothing to take a ratio of
    for round_no in range(2, args.rounds + 1):
        print(f"ratio round {round_no} of {args.rounds}, {args.cdf_clients} clients:", flush=True)
        for name in names:
            row = await run_round_point(name, round_no, args, work, report)
            if row is not None:
                rounds.append(row)


def _line(row: dict[str, Any]) -> str:
    srv = "in-proc" if row["server_cpu"] is None else f"{row['server_cpu']:.2f}"
    return (
        f"  {row['system']:<16} {row['clients']:>4} clients: {row['acked_per_s']:>9,}/s  "
        f"p50 {row['p50_ms']:.2f}  p99 {row['p99_ms']:.2f}  p99.9 {row['p999_ms']:.2f} ms  "
        f"cpu server {srv} client {row['client_cpu']:.2f} other {row['other_cpu']:.2f}"
    )


TARGETS = (
    ("ackwal-socket throughput >= 4x postgres", "postgres", "throughput", 4.0),
    ("ackwal-socket throughput >= 1.5x nats-default", "nats-default", "throughput", 1.5),
    ("ackwal-socket p99 < postgres p99", "postgres", "p99", 1.0),
    ("ackwal-socket p99 < nats-default p99", "nats-default", "p99", 1.0),
)


def _ratio(mine: dict[str, Any], other: dict[str, Any], kind: str) -> float | None:
    field = "acked_per_s" if kind == "throughput" else "p99_ms"
    theirs: float = other[field]
    return round(mine[field] / theirs, 2) if theirs else None


def ratios(
    rows: list[dict[str, Any]], clients: int, rounds: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Ratios at ``clients`` from this run's own rows, and each target met or not: judged on
    the median of its per-round ratios (``rounds``: rows with a "round"), or on ``rows``
    alone when there are no rounds."""
    at = {r["system"]: r for r in rows if r["clients"] == clients}
    out: dict[str, Any] = {"clients": clients, "vs": {}, "targets": []}
    for mine in (
        "ackwal-socket",
        "ackwal-batch",
        "ackwal-embedded",
        "ackwal-nosync",
        "ackwal-interpreted",
    ):
        if mine not in at:
            continue
        for other, r in at.items():
            if other.startswith("ackwal") or not r["acked_per_s"]:
                continue
            out["vs"][f"{mine} / {other}"] = {
                "throughput": _ratio(at[mine], r, "throughput"),
                "p99": _ratio(at[mine], r, "p99"),
            }
    by_round: dict[int, dict[str, dict[str, Any]]] = {}
    for r in rounds if rounds else [{**r, "round": 1} for r in at.values()]:
        by_round.setdefault(r["round"], {})[r["system"]] = r
    for text, other, kind, bound in TARGETS:
        per_round = [
            ratio
            for _, systems in sorted(by_round.items())
            if "ackwal-socket" in systems and other in systems
            if (ratio := _ratio(systems["ackwal-socket"], systems[other], kind)) is not None
        ]
        ratio = round(statistics.median(per_round), 2) if per_round else None
        met = None if ratio is None else (ratio >= bound if kind == "throughput" else ratio < bound)
        out["targets"].append({"target": text, "ratio": ratio, "per_round": per_round, "met": met})
    return out


def write_plots(report: dict[str, Any], out: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["systems"])
    palette = [plt.get_cmap("tab10")(i) for i in (1, 2, 3, 0, 4, 5, 6, 8, 9)]  # no grey
    colours = {n: palette[i % len(palette)] for i, n in enumerate(n for n in names if n != "disk")}
    colours["disk"] = (0.45, 0.45, 0.45, 1.0)

    def style(name: str) -> dict[str, Any]:
        s: dict[str, Any] = {"color": colours[name], "linewidth": 2, "marker": "o"}
        if name == "disk":
            s.update(linestyle=":", marker="s")
        elif not report["systems"][name]["durable_at_ack"]:
            s.update(linestyle="--", marker="x")
        elif name.startswith("ackwal"):
            s.update(linewidth=2.8)
        return s

    subtitle = (
        f"{report['machine']['cpus']} cores, {report['disk']['fstype']} on "
        f"{report['disk']['device']}, {report['settings']['seconds']} s per point, "
        f"{report['started'][:16]}\nackwal {report['settings'].get('ackwal_build', 'interpreted')}"
    )
    paths = []

    fig, ax = plt.subplots(figsize=(11, 6.5))
    for name in names:
        pts = sorted(
            (r["clients"], r["acked_per_s"]) for r in report["rows"] if r["system"] == name
        )
        if pts:
            label = report["systems"][name]["label"]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=label, **style(name))
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(report["settings"]["clients"])
    ax.set_xticklabels([str(c) for c in report["settings"]["clients"]])
    ax.set_xlabel("concurrent clients (closed loop)")
    ax.set_ylabel("acknowledged appends per second (log)")
    ax.set_title(f"Throughput against clients, 256-byte commands\n{subtitle}", fontsize=11)
    ax.grid(True, which="both", alpha=0.3)
    if ax.lines:
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=9)
    fig.tight_layout()
    path = os.path.join(out, "compare_throughput.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(path)

    if report["cdf"]:
        fig, (left, right) = plt.subplots(1, 2, figsize=(14, 7))
        for name in names:
            pts = report["cdf"].get(name)
            if not pts:
                continue
            label = report["systems"][name]["label"]
            per = report["systems"][name]["entries_per_request"]
            if per > 1:
                label = label.replace(" (entries/s)", f" (per {per}-entry request)")
            ms = [max(p[1], 1e-3) for p in pts]
            qs = [p[0] for p in pts]
            st = style(name)
            st.pop("marker")
            left.plot(ms, qs, label=label, **st)
            right.plot(ms, [max(1 - q, 1e-5) for q in qs], label=label, **st)
        left.set_xscale("log")
        left.set_xlabel("latency, ms (log)")
        left.set_ylabel("fraction of appends at or below")
        left.set_title("Latency CDF")
        right.set_xscale("log")
        right.set_yscale("log")
        right.set_ylim(5e-5, 1.1)
        right.set_yticks([1, 0.1, 0.01, 0.001, 0.0001])
        right.set_yticklabels(["100%", "10%\n(p90)", "1%\n(p99)", "0.1%\n(p99.9)", "0.01%"])
        right.set_xlabel("latency, ms (log)")
        right.set_ylabel("share of appends slower than x (log)")
        right.set_title("Tail: p90, p99, p99.9")
        for a in (left, right):
            a.grid(True, which="both", alpha=0.3)
        handles, labels = left.get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=9, frameon=False)
        fig.suptitle(
            f"Append latency at {report['settings']['cdf_clients']} clients\n{subtitle}",
            fontsize=11,
        )
        fig.tight_layout(rect=(0, 0.03 + 0.035 * ((len(labels) + 2) // 3), 1, 1))
        path = os.path.join(out, "compare_latency_cdf.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def print_report(report: dict[str, Any]) -> None:
    rows = [
        {
            "system": r["system"],
            "clients": r["clients"],
            "acked/s": f"{r['acked_per_s']:,}",
            "p50 ms": r["p50_ms"],
            "p99 ms": r["p99_ms"],
            "p99.9 ms": r["p999_ms"],
            "server cpu": "in-proc" if r["server_cpu"] is None else r["server_cpu"],
            "client cpu": r["client_cpu"],
            "other cpu": r["other_cpu"],
            "durable at ACK": "yes" if r["durable_at_ack"] else "NO",
        }
        for r in report["rows"]
    ]
    if rows:
        print()
        print_table(rows)
    if report["duplicates"]:
        print()
        print_table(report["duplicates"])
    if report["duplicates"]:
        print("\nhow each system answers a retried request id:")
        for d in report["duplicates"]:
            print(f"  {d['system']}: {report['systems'][d['system']]['dedup']}")
    m = report["machine"]
    print(f"\nackwal build: {report['settings'].get('ackwal_build', 'interpreted')}")
    print(
        f"background load (cores busy without this script): {m['background_cpu_before']} "
        f"before, {m['background_cpu_after']} after; loadavg {m['loadavg_before'][0]:.2f} -> "
        f"{m['loadavg_after'][0]:.2f}; other_cpu column: the rest of the machine per point "
        "(includes kernel I/O threads working for the system under test)"
    )
    r = report["ratios"]
    if r["vs"]:
        print(f"\nratios at {r['clients']} clients (same run):")
        for key, v in r["vs"].items():
            print(f"  {key}: throughput x{v['throughput']}, p99 x{v['p99']}")
        for t in r["targets"]:
            verdict = {True: "MET", False: "NOT MET", None: "not measured"}[t["met"]]
            rounds = t["per_round"]
            how = (
                f"median ratio {t['ratio']} over {len(rounds)} rounds: "
                + ", ".join(str(x) for x in rounds)
                if len(rounds) > 1
                else f"ratio {t['ratio']}"
            )
            print(f"  target {t['target']}: {verdict} ({how})")
    for e in report["errors"]:
        print(f"ERROR {e['system']}: {e['error']}")


async def background_cpu(seconds: float) -> float:
    """Cores the rest of the machine keeps busy while this script does nothing: the noise."""
    m0, c0, t0 = machine_busy_seconds(), self_cpu_seconds(), time.perf_counter()
    await asyncio.sleep(seconds)
    wall = time.perf_counter() - t0
    return round(max(0.0, (machine_busy_seconds() - m0 - (self_cpu_seconds() - c0)) / wall), 2)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    work = tempfile.mkdtemp(prefix="ackwal-compare-", dir=args.dir)
    if os.geteuid() == 0:
        os.chmod(work, 0o755)  # PostgreSQL runs as its own user and must reach its directory
    report: dict[str, Any] = {
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "loadavg_before": os.getloadavg(),
        },
        "disk": filesystem_of(work),
        "settings": {
            "clients": args.clients,
            "seconds": args.seconds,
            "warmup": args.warmup,
            "cdf_clients": args.cdf_clients,
            "duplicate_fraction": DUP_FRACTION if args.dup else 0,
            "duplicate_clients": args.dup_clients,
            "command_bytes": len(COMMAND),
            "ackwal_record_bytes": ackwal_record_bytes(),
            "batch_entries": BATCH_ENTRIES,
            "rounds": args.rounds,
            # Servers and the embedded journal import what this process imports (same
            # PYTHONPATH): `make bench` runs the mypyc-compiled build, as the image ships it.
            "ackwal_build": describe_build(),
        },
        "systems": {},
        "rows": [],
        "cdf": {},
        "duplicates": [],
        "rounds": [],
        "errors": [],
    }
    report["machine"]["background_cpu_before"] = await background_cpu(args.warmup)
    if report["disk"]["fstype"] in ("tmpfs", "ramfs"):
        print(f"WARNING: {work} is on {report['disk']['fstype']}: fsync costs nothing there")
    print(f"ackwal build: {report['settings']['ackwal_build']}", flush=True)
    t0 = time.monotonic()
    try:
        for name in args.systems:
            print(f"{name}:", flush=True)
            await run_system(name, args, work, report)
        await run_ratio_rounds(args, work, report)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["machine"]["background_cpu_after"] = await background_cpu(args.warmup)
    report["machine"]["loadavg_after"] = os.getloadavg()
    report["elapsed_s"] = round(time.monotonic() - t0, 1)
    report["ratios"] = ratios(report["rows"], args.cdf_clients, report["rounds"])
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="systems: "
        + ", ".join(SYSTEMS)
        + "; opt-in, never in the default run: ackwal-nosync (not durable), ackwal-interpreted",
    )
    parser.add_argument(
        "--systems", default=",".join(SYSTEMS), help="comma-separated subset (default: all)"
    )
    parser.add_argument("--clients", help="comma-separated client counts (default 1,16,64,256)")
    parser.add_argument("--seconds", type=float, help="measured seconds per point (default 5)")
    parser.add_argument("--warmup", type=float, help="discarded seconds per point (default 1)")
    parser.add_argument(
        "--quick", action="store_true", help="1 and 64 clients, 0.7 s points: under a minute"
    )
    parser.add_argument(
        "--no-duplicates", dest="dup", action="store_false", help="skip the retry scenario"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        help="ratio rounds: the targets' 64-client points, interleaved, judged on the median "
        "(default 3; --quick: 1)",
    )
    parser.add_argument("--dir", default=".", help="directory on the disk to measure (default .)")
    parser.add_argument("--out", default="benchmarks/results", help="where JSON and PNGs go")
    args = parser.parse_args(argv)
    if args.clients is None:
        args.clients = "1,64" if args.quick else "1,16,64,256"
    if args.seconds is None:
        args.seconds = 0.7 if args.quick else 5.0
    if args.warmup is None:
        args.warmup = 0.3 if args.quick else 1.0
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    args.clients = [int(x) for x in args.clients.split(",")]
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    known = SYSTEMS + OPT_IN_SYSTEMS
    unknown = [s for s in args.systems if s not in known]
    if unknown:
        parser.error(f"unknown system(s) {', '.join(unknown)}; known: {', '.join(known)}")
    # The CDF, the ratios and the duplicate scenario use 64 clients, or the nearest measured.
    args.cdf_clients = min(args.clients, key=lambda c: (abs(c - 64), -c))
    args.dup_clients = args.cdf_clients
    return args


def main(argv: list[str] | None = None) -> int:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    args = parse_args(argv)
    report = uvloop.run(run(args))
    os.makedirs(args.out, exist_ok=True)
    json_path = os.path.join(args.out, "compare.json")
    with open(json_path, "w") as f:
        json.dump(report, f, indent=2)
    paths = write_plots(report, args.out)
    print_report(report)
    print(f"\nwrote {json_path}, {', '.join(paths)} in {report['elapsed_s']} s")
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
