"""``JournalClient``: typed errors, and reconnect + re-send against a real server process."""

from __future__ import annotations

import asyncio
import errno
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.client import ClientClosedError, JournalClient, _ClientProtocol
from service.entry import AppendResult
from service.errors import (
    AckwalError,
    BadRequestError,
    BusyError,
    EntryTooLargeError,
    HaltedError,
    UnknownJournalError,
    error_from_code,
)
from service.protocol import ErrorCode, decode_request
from service.settings import Settings
from tests.service.conftest import RunningService
from tests.service.harness import (
    ServerProcess,
    assert_gap_free,
    command_for,
    entries_of,
    make_settings,
    new_rid,
    read_log,
    serve,
    short_socket_path,
)
from wal.faultfs import FaultyFileLayer


@pytest.fixture
def sock() -> Iterator[str]:
    with short_socket_path() as path:
        yield path


@pytest.fixture
def settings(tmp_path: Path, sock: str) -> Settings:
    return make_settings(tmp_path / "data", sock)


@pytest.fixture
def server(tmp_path: Path, sock: str) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path / "data", sock, tmp_path / "server.log")
    try:
        yield proc
    finally:
        proc.stop_quietly()


# -- typed errors ------------------------------------------------------------------------------


def test_every_error_code_has_an_exception_carrying_that_code() -> None:
    codes = [v for k, v in vars(ErrorCode).items() if k.isupper()]
    assert len(codes) >= 12
    for code in codes:
        exc = error_from_code(code, "why")
        assert isinstance(exc, AckwalError)
        assert (exc.code, exc.message) == (code, "why")
        if code != ErrorCode.INTERNAL:
            assert type(exc) is not AckwalError, code  # a subclass callers can catch
    unknown = error_from_code("from_the_future", "m")
    assert (type(unknown), unknown.code) == (AckwalError, "from_the_future")


async def test_a_malformed_request_id_raises_bad_request(settings: Settings, sock: str) -> None:
    async with serve(settings), JournalClient(sock) as client:
        with pytest.raises(BadRequestError, match="16 bytes"):
            await client.append(b"x" * 15, "t", b"c")
        assert (await client.append(new_rid(), "t", b"c")).seq > 0  # the connection lives on


async def test_an_entry_over_the_record_size_raises_entry_too_large(
    settings: Settings, sock: str
) -> None:
    async with serve(settings), JournalClient(sock) as client:
        before = (await client.status())["last_seq"]
        with pytest.raises(EntryTooLargeError):
            await client.append(new_rid(), "t", bytes(settings.max_record_size + 1))
        assert (await client.status())["last_seq"] == before  # nothing written


async def test_connecting_to_an_unknown_journal_raises_unknown_journal(
    settings: Settings, sock: str
) -> None:
    async with serve(settings):
        with pytest.raises(UnknownJournalError, match="nope"):
            await JournalClient.connect(sock, journal="nope")


async def test_connecting_beyond_max_connections_raises_busy(settings: Settings, sock: str) -> None:
    async with serve(settings.replace(max_connections=1)), JournalClient(sock) as first:
        with pytest.raises(BusyError, match="max_connections=1"):
            await JournalClient.connect(sock)
        assert (await first.append(new_rid(), "t", b"c")).seq > 0


async def test_appends_to_a_halted_journal_raise_halted_and_reads_still_work(
    settings: Settings, sock: str
) -> None:
    fs = FaultyFileLayer()
    async with serve(settings.replace(exit_on_halt=False), fs), JournalClient(sock) as client:
        kept = await client.append(new_rid(), "t", b"kept")
        fs.fail_next("fdatasync", errno.EIO)
        with pytest.raises(HaltedError):
            await client.append(new_rid(), "t", b"lost")
        with pytest.raises(HaltedError):
            await client.append_batch(
                [{"request_id": new_rid(), "command_type": "t", "command": b""}]
            )
        status = await client.status()
        assert (status["halted"], status["last_seq"]) == (True, kept.seq)
        assert [e.command for e in await client.read(1)] == [b"kept"]


async def test_a_closed_client_fails_its_unanswered_requests(settings: Settings, sock: str) -> None:
    async with serve(settings):
        client = await JournalClient.connect(sock)
        await client.close()
        with pytest.raises(ClientClosedError):
            await client.status()


async def test_a_request_after_the_connection_is_lost_fails_at_once_without_reconnect(
    running_service: RunningService,
) -> None:
    async with running_service() as service:
        client = await JournalClient.connect(service.settings.socket_path, reconnect=False)
        await client.status()
    # The service is gone: the request must fail, not wait for an answer that cannot come.
    with pytest.raises(ClientClosedError):
        await asyncio.wait_for(client.append(new_rid(), "t", b"c"), 5)
    await client.close()


async def test_a_request_after_reconnecting_gave_up_starts_a_new_reconnect(
    running_service: RunningService,
) -> None:
    async with running_service() as service:
        sock = service.settings.socket_path
        client = await JournalClient.connect(sock, reconnect_timeout=0.2)
    with pytest.raises(ClientClosedError, match="could not reconnect"):
        await client.status()  # queued while reconnecting; failed when it gave up
    async with running_service():
        assert (await asyncio.wait_for(client.append(new_rid(), "t", b"c"), 10)).seq > 0
    await client.close()


# -- reconnect and re-send ---------------------------------------------------------------------


async def test_appends_unanswered_when_the_server_dies_are_resent_and_each_answered_once(
    server: ServerProcess, sock: str
) -> None:
    await server.start_ready()
    client = await JournalClient.connect(sock, reconnect_timeout=20)
    rids = [new_rid() for _ in range(4000)]
    answers: dict[bytes, list[AppendResult]] = {rid: [] for rid in rids}

    async def producer(mine: list[bytes]) -> None:
        for i in range(0, len(mine), 50):
            window = mine[i : i + 50]
            results = await asyncio.gather(
                *(client.append(rid, "t", command_for(rid)) for rid in window)
            )
            for rid, result in zip(window, results, strict=True):
                answers[rid].append(result)

    producers = asyncio.gather(*(producer(rids[k::4]) for k in range(4)))
    while sum(map(len, answers.values())) < 400:
        await asyncio.sleep(0.002)
    server.signal(signal.SIGSTOP)  # from here on nothing is answered...
    while not client._pending:
        await asyncio.sleep(0.002)
    await server.kill9()  # ...and the server dies with appends on the wire
    await asyncio.sleep(0.1)
    await server.start_ready()
    await asyncio.wait_for(producers, 30)
    assert client.reconnects >= 1
    assert all(len(a) == 1 for a in answers.values())  # exactly one answer per append
    by_seq = {a[0].seq: rid for rid, a in answers.items()}
    assert len(by_seq) == len(rids)  # unique seqs
    records = await read_log(sock)
    assert_gap_free(records)
    assert [(e.seq, e.request_id, e.command) for e in entries_of(records)] == [
        (seq, by_seq[seq], command_for(by_seq[seq])) for seq in sorted(by_seq)
    ]
    await client.close()
    server.signal(signal.SIGTERM)
    assert await server.wait() == 0


async def test_compact_appends_unanswered_at_a_crash_are_resent_as_maps(
    server: ServerProcess, sock: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server a client reconnects to may be another version (a rollback), one that does
    not take compact appends: what went compact is resent as the equivalent map."""
    await server.start_ready()
    client = await JournalClient.connect(sock, reconnect_timeout=20)
    assert client.server_info["compact_append"] is True
    server.signal(signal.SIGSTOP)  # nothing sent from here on is read before the crash
    rids = [new_rid() for _ in range(3)]
    appends = asyncio.gather(*(client.append(rid, "t", command_for(rid)) for rid in rids))
    while len(client._pending) < len(rids):
        await asyncio.sleep(0.002)
    assert all(req.frame[4] == 0x95 for req in client._pending.values())  # sent compact
    sent: list[bytes] = []
    write = _ClientProtocol.write

    def spy(protocol: _ClientProtocol, frame: bytes) -> None:
        sent.append(frame)
        write(protocol, frame)

    monkeypatch.setattr(_ClientProtocol, "write", spy)
    await server.kill9()
    await asyncio.sleep(0.1)
    await server.start_ready()
    results = await asyncio.wait_for(appends, 30)
    first = results[0].seq  # after the new run's RUN_STARTED record
    assert [(r.seq, r.duplicate) for r in results] == [(first + i, False) for i in range(3)]
    resent = [decode_request(frame[4:]) for frame in sent]
    # (resent once per connection attempt that got as far as the hello)
    assert {m["request_id"] for m in resent if isinstance(m, dict) and "request_id" in m} == set(
        rids
    )
    assert not [m for m in resent if isinstance(m, list)]
    await client.close()
    server.signal(signal.SIGTERM)
    assert await server.wait() == 0


async def test_a_subscription_resumes_after_a_reconnect_with_no_gap_or_duplicate(
    server: ServerProcess, sock: str
) -> None:
    await server.start_ready()
    writer = await JournalClient.connect(sock, reconnect_timeout=20)
    reader = await JournalClient.connect(sock, reconnect_timeout=20)
    total = 1500
    seen: list[int] = []

    async def follow() -> None:
        async for item in reader.subscribe(from_seq=1):
            seen.append(item.seq)
            if len(seen) == total:
                return

    follower = asyncio.create_task(follow())
    for i in range(total // 50):
        if i == 10:
            while len(seen) < 250:
                await asyncio.sleep(0.002)
            await server.kill9()
            await server.start_ready()
        await asyncio.gather(*(writer.append(new_rid(), "t", b"x") for _ in range(50)))
    await asyncio.wait_for(follower, 30)
    assert seen == [e.seq for e in entries_of(await read_log(sock))]  # in order, each once
    assert reader.reconnects == 1
    await writer.close()
    await reader.close()


async def test_a_subscribe_unanswered_when_the_server_dies_is_sent_again_only_once(
    server: ServerProcess, sock: str
) -> None:
    await server.start_ready()
    async with JournalClient(sock, reconnect_timeout=20) as client:
        seqs = [(await client.append(new_rid(), "t", b"x")).seq for _ in range(3)]
        server.signal(signal.SIGSTOP)  # the subscribe request gets no answer
        stream = client.subscribe(from_seq=1)
        first = asyncio.create_task(anext(stream))
        await asyncio.sleep(0.1)
        await server.kill9()
        await server.start_ready()
        assert (await asyncio.wait_for(first, 20)).seq == seqs[0]
        assert (await anext(stream)).seq == seqs[1]
        assert (await anext(stream)).seq == seqs[2]
        await stream.aclose()


async def test_a_subscription_resumes_across_a_graceful_restart_of_the_server(
    server: ServerProcess, sock: str
) -> None:
    await server.start_ready()
    async with JournalClient(sock, reconnect_timeout=20) as client:
        seqs = [(await client.append(new_rid(), "t", b"x")).seq for _ in range(5)]
        stream = client.subscribe(from_seq=1)
        assert [(await anext(stream)).seq for _ in range(5)] == seqs
        server.signal(signal.SIGTERM)
        assert await server.wait() == 0
        await server.start_ready()
        after = await client.append(new_rid(), "t", b"after the restart")
        assert (await asyncio.wait_for(anext(stream), 20)).seq == after.seq
        await stream.aclose()


async def test_read_pages_past_records_that_are_not_entries(settings: Settings, sock: str) -> None:
    for _ in range(3):  # each start and clean stop leaves a run_started and a run_sealed record
        async with serve(settings):
            pass
    async with serve(settings), JournalClient(sock) as client:
        ack = await client.append(new_rid(), "T", b"x")
        assert ack.seq > 6
        entries = await client.read(1, limit=2)
        assert [e.seq for e in entries] == [ack.seq]
        assert await client.read(ack.seq + 1) == []
