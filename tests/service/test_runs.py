"""Runs: a durable RUN_STARTED record before any append, RUN_SEALED on a clean stop, and the
unsealed runs of crashes named at the next start and by ``ackwal stat``."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from service import __version__
from service.app import Service
from service.client import JournalClient
from service.errors import ReadOnlyError
from service.journal import Journal
from service.runs import RunStartTimeoutError, config_hash, decode_run_payload, runs_of
from service.settings import Settings, load_settings
from tests.service.conftest import RunningService
from tests.service.harness import ServerProcess, make_settings, new_rid, short_socket_path
from tests.tools.helpers import run_cli
from wal import Record, RecordType, Wal
from wal.faultfs import FaultyFileLayer, FsCall, Phase
from wal.format import FORMAT_VERSION


@pytest.fixture
def sock() -> Iterator[str]:
    with short_socket_path() as path:
        yield path


def records(data: Path) -> list[tuple[int, int, bytes]]:
    with Wal.open(str(data), readonly=True) as wal:
        return [(r.seq, r.type, r.payload) for r in wal.read(wal.first_seq)]


async def test_a_start_makes_its_run_started_record_durable_before_the_first_append(
    running_service: RunningService, tmp_path: Path
) -> None:
    before = time.time_ns() // 1_000_000
    async with running_service() as svc:
        journal = svc.journals["main"]
        started = journal.run_started_seq
        assert started == journal.last_seq == journal.wal.last_seq == 1  # durable at ready
        ack = await journal.append(new_rid(), "T", b"x")
        assert ack.seq == started + 1
        rec = journal.wal.get(started)
        assert rec is not None and rec.type == RecordType.RUN_STARTED
        payload = decode_run_payload(rec.payload)
        assert payload == {
            "v": 1,
            "service_version": __version__,
            "format_version": FORMAT_VERSION,
            "config_hash": config_hash(svc.settings),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "time_ms": payload["time_ms"],
        }
        assert before <= payload["time_ms"] <= time.time_ns() // 1_000_000
        assert journal.read(1) == journal.read(ack.seq)  # readers of entries never see it


async def test_a_clean_stop_seals_the_run_after_its_last_entry(
    running_service: RunningService, tmp_path: Path
) -> None:
    async with running_service() as svc:
        seqs = [(await svc.journals["main"].append(new_rid(), "T", b"x")).seq for _ in range(3)]
    recs = records(tmp_path / "data")
    assert [(seq, rtype) for seq, rtype, _ in recs] == [
        (1, RecordType.RUN_STARTED),
        *[(s, RecordType.ENTRY) for s in seqs],
        (seqs[-1] + 1, RecordType.RUN_SEALED),
    ]
    sealed = decode_run_payload(recs[-1][2])
    assert (sealed["started_seq"], sealed["entries"]) == (1, 3)
    async with running_service() as svc:  # the next run starts right after the seal
        assert svc.journals["main"].run_started_seq == seqs[-1] + 2


def test_the_configuration_hash_changes_with_any_setting_and_only_then() -> None:
    a = load_settings(env={}, flags={"data_dir": "/d"})
    assert config_hash(a) == config_hash(load_settings(env={}, flags={"data_dir": "/d"}))
    assert config_hash(a) != config_hash(a.replace(queue_capacity=7))


async def test_a_killed_run_is_unsealed_and_the_next_start_logs_it_and_stat_flags_it(
    tmp_path: Path, sock: str
) -> None:
    data = tmp_path / "data"
    server = ServerProcess(data, sock, tmp_path / "server.log")
    try:
        await server.start_ready()
        async with JournalClient(sock) as client:
            for _ in range(5):
                await client.append(new_rid(), "T", b"x")
        killed_pid = server.proc.pid  # type: ignore[union-attr]
        await server.kill9()
        await server.start_ready()
        recovering = [
            json.loads(line)
            for line in server.log_text().splitlines()
            if '"journal.recovering_from_run"' in line
        ]
        assert len(recovering) == 1
        assert (recovering[0]["started_seq"], recovering[0]["pid"]) == (1, killed_pid)
        assert (recovering[0]["sealed"], recovering[0]["entries"]) == (False, 5)
        server.signal(15)
        assert await server.wait() == 0
    finally:
        server.stop_quietly()
    res = run_cli("stat", str(data), "--json")
    assert res.code == 0, res.err
    runs = json.loads(res.out)["runs"]
    assert [(r["state"], r["started_seq"], r["entries"]) for r in runs] == [
        ("unsealed", 1, 5),
        ("sealed", 7, 0),
    ]
    text = run_cli("stat", str(data)).out
    assert "runs         2, 1 ended without a seal" in text
    assert "UNSEALED seq 1..6" in text


async def test_a_start_fails_when_its_run_started_record_is_not_durable_in_time(
    tmp_path: Path,
) -> None:
    release = threading.Event()

    def stuck(call: FsCall, phase: Phase) -> None:
        if call.op == "fdatasync" and phase == "before" and call.path.endswith(".wal"):
            release.wait()  # a disk that does not complete the write

    fs = FaultyFileLayer()
    fs.hook = stuck
    settings: Settings = make_settings(tmp_path / "data", "/unused", run_started_timeout=0.3)
    try:
        with pytest.raises(RunStartTimeoutError, match=r"run_started_timeout=0\.3s"):
            await Journal.open(settings, fs=fs)
    finally:
        release.set()  # let the writer thread finish, so that the test process can exit


def test_runs_group_records_from_each_start_to_its_seal() -> None:
    def rec(seq: int, rtype: int) -> Record:
        return Record(seq, rtype, b"\x80" if rtype != RecordType.ENTRY else b"", 0)

    log = [rec(1, 2), rec(2, 1), rec(3, 1), rec(4, 2), rec(5, 1), rec(6, 3), rec(7, 2)]
    runs = runs_of(iter(log))
    assert [(r.started_seq, r.sealed_seq, r.last_seq, r.entries) for r in runs] == [
        (1, None, 3, 2),
        (4, 6, 6, 1),
        (7, None, 7, 0),
    ]


def directory_state(data: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(data)): p.read_bytes() if p.is_file() else b"<dir>"
        for p in sorted(data.rglob("*"))
    }


async def test_a_read_only_server_serves_reads_and_refuses_writes_without_touching_the_directory(
    running_service: RunningService, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    async with running_service() as svc:
        journal = svc.journals["main"]
        rids = [new_rid() for _ in range(4)]
        seqs = [(await journal.append(rid, "T", b"x")).seq for rid in rids]
        await journal.cursor_commit("follower", seqs[1])
        await journal.snapshot_put(seqs[2], b"state as of the third entry")
    before = directory_state(data)
    async with (
        running_service(read_only=True) as svc,
        JournalClient(svc.settings.socket_path) as client,
    ):
        assert (await client.status())["read_only"] is True
        assert [e.seq for e in await client.read(1)] == seqs
        stored = await client.lookup(rids[2])
        assert stored is not None and stored.seq == seqs[2]
        it = client.subscribe(cursor="follower")  # cursors can be followed, not moved
        assert [(await anext(it)).seq for _ in range(2)] == seqs[2:]
        await it.aclose()
        recovery = await client.recover()  # replay for an engine: snapshot, then the rest
        assert recovery.snapshot is not None
        assert recovery.snapshot.data == b"state as of the third entry"
        assert [(await anext(recovery.entries)).seq] == seqs[3:]
        await recovery.entries.aclose()  # type: ignore[attr-defined]
        with pytest.raises(ReadOnlyError, match="read-only"):
            await client.append(new_rid(), "T", b"x")
        with pytest.raises(ReadOnlyError):
            await client.append_batch([{"request_id": new_rid(), "command_type": "T",
                                        "command": b"x"}])  # fmt: skip
        with pytest.raises(ReadOnlyError):
            await client.cursor_commit("follower", seqs[3])
        with pytest.raises(ReadOnlyError):
            await svc.journals["main"].append(new_rid(), "T", b"x")
    assert directory_state(data) == before  # no run record, no seal, no lock, no temp file


async def test_a_read_only_server_may_run_beside_the_writer_and_sees_the_log_as_of_its_start(
    running_service: RunningService, tmp_path: Path
) -> None:
    async with running_service() as writer:
        journal = writer.journals["main"]
        first = (await journal.append(new_rid(), "T", b"x")).seq
        with short_socket_path() as other:
            settings = load_settings(
                env={},
                flags={"data_dir": str(tmp_path / "data"), "socket_path": other,
                       "metrics_addr": "", "read_only": True},
            )  # fmt: skip
            reader = Service(settings)
            await reader.start()
            try:
                later = (await journal.append(new_rid(), "T", b"y")).seq  # the writer goes on
                async with JournalClient(other) as client:
                    assert [e.seq for e in await client.read(1)] == [first]
                    assert (await client.status())["last_seq"] == first
                assert later == first + 1
            finally:
                reader.request_stop()
                await reader.shutdown()


class ReadOnlyServerProcess(ServerProcess):
    def argv(self) -> list[str]:
        return [*super().argv(), "--read-only"]


async def test_ackwal_serve_read_only_answers_appends_with_read_only(
    tmp_path: Path, sock: str
) -> None:
    data = tmp_path / "data"
    writer = ServerProcess(data, sock, tmp_path / "writer.log")
    reader = ReadOnlyServerProcess(data, sock, tmp_path / "reader.log")
    try:
        await writer.start_ready()
        async with JournalClient(sock) as client:
            seq = (await client.append(new_rid(), "T", b"x")).seq
        writer.signal(15)
        assert await writer.wait() == 0
        await reader.start_ready()
        async with JournalClient(sock) as client:
            assert [e.seq for e in await client.read(1)] == [seq]
            with pytest.raises(ReadOnlyError):
                await client.append(new_rid(), "T", b"x")
        reader.signal(15)
        assert await reader.wait() == 0
    finally:
        writer.stop_quietly()
        reader.stop_quietly()
