"""The service over its real Unix socket: ordering, idempotency, batches, subscriptions, limits.

Each test starts a real :class:`service.app.Service` in-process (``running_service``: real
socket, files, fdatasync) and talks to it with :class:`service.client.JournalClient` or with
raw frames.
"""

from __future__ import annotations

import asyncio
import collections
import os
import socket
import stat
import threading
from pathlib import Path
from typing import Any

import pytest

from service.app import EXIT_OK, Service
from service.client import ClientClosedError, JournalClient
from service.entry import AppendResult, StoredEntry
from service.errors import ShuttingDownError
from service.server import SocketInUseError
from tests.service.conftest import RunningService
from tests.service.harness import (
    RawConnection,
    ServerProcess,
    append_message,
    assert_gap_free,
    batch_positions,
    command_for,
    entries_of,
    new_rid,
    read_log,
    response_for,
)
from wal import LockedError
from wal.faultfs import FaultyFileLayer, FsCall, Phase
from wal.writer import SPARE_NAME


def socket_of(service: Service) -> str:
    return service.settings.socket_path


def base_of(service: Service) -> int:
    """The last seq before the test appends anything (the log holds run markers too)."""
    return service.journals["main"].last_seq


async def read_all(service: Service) -> list[StoredEntry]:
    """Every entry, after checking seqs are gap-free over the whole log."""
    records = await read_log(socket_of(service))
    assert_gap_free(records)
    return entries_of(records)


async def append_one(client: JournalClient, rid: bytes) -> int:
    result = await client.append(rid, "test.cmd", command_for(rid), response=response_for(rid))
    assert not result.duplicate
    return result.seq


# -- ordering and durability -------------------------------------------------------------------


async def test_sixty_four_pipelining_clients_get_unique_gap_free_seqs_that_read_back(
    running_service: RunningService,
) -> None:
    per_client = 20
    async with running_service() as service:
        sock = socket_of(service)
        base = base_of(service)
        clients = [await JournalClient.connect(sock, reconnect=False) for _ in range(64)]
        rids = [[new_rid() for _ in range(per_client)] for _ in clients]

        async def pipeline(client: JournalClient, mine: list[bytes]) -> list[int]:
            # gather writes every append before the first reply: one pipelined burst
            return list(await asyncio.gather(*(append_one(client, rid) for rid in mine)))

        seqs = await asyncio.gather(*(pipeline(c, r) for c, r in zip(clients, rids, strict=True)))
        acked = {
            seq: rid
            for mine, got in zip(rids, seqs, strict=True)
            for rid, seq in zip(mine, got, strict=True)
        }
        total = 64 * per_client
        assert sorted(acked) == list(range(base + 1, base + total + 1))
        for got in seqs:
            assert got == sorted(got), "one connection's appends are committed in send order"

        reader = clients[0]
        records = await read_all(service)
        assert [r.seq for r in records] == sorted(acked)
        for rec in records:
            assert rec.request_id == acked[rec.seq]
            assert rec.command == command_for(rec.request_id)
            assert rec.response == response_for(rec.request_id)
        looked_up = await asyncio.gather(*(reader.lookup(rid) for rid in acked.values()))
        for (seq, rid), found in zip(acked.items(), looked_up, strict=True):
            assert found is not None
            assert (found.seq, found.request_id, found.command) == (seq, rid, command_for(rid))
        for client in clients:
            await client.close()


# -- duplicates --------------------------------------------------------------------------------


async def test_a_sequential_duplicate_gets_the_original_seq_and_response_and_writes_nothing(
    running_service: RunningService,
) -> None:
    async with running_service() as service, JournalClient(socket_of(service)) as client:
        rid = new_rid()
        n = base_of(service) + 1
        first = await client.append(rid, "test.cmd", command_for(rid), response=b"filled 10@99")
        again = await client.append(rid, "test.cmd", b"a different body", response=b"other")
        assert (first.seq, first.duplicate, first.response) == (n, False, None)
        assert (again.seq, again.duplicate, again.response) == (n, True, b"filled 10@99")
        assert service.journals["main"].last_seq == n
        [stored] = await client.read(n)
        assert stored.command == command_for(rid)  # the original is kept, the retry ignored


async def test_a_duplicate_sent_before_the_original_is_acked_gets_the_same_seq(
    running_service: RunningService,
) -> None:
    async with running_service() as service:
        conn = await RawConnection.open(socket_of(service))
        rid = new_rid()
        n = base_of(service) + 1
        # Both frames arrive in one read: the second is a duplicate of an in-flight entry.
        conn.send(append_message(rid, 1), append_message(rid, 2, command=b"retry body"))
        replies = {r["id"]: r for r in (await conn.recv(), await conn.recv())}
        assert replies[1] == {"id": 1, "seq": n, "duplicate": False}
        assert replies[2] == {"id": 2, "seq": n, "duplicate": True, "response": response_for(rid)}
        assert service.journals["main"].last_seq == n
        await conn.close()


async def test_a_duplicate_from_another_connection_during_the_fdatasync_waits_for_it(
    running_service: RunningService,
) -> None:
    fs = FaultyFileLayer()
    in_sync = threading.Event()
    release = threading.Event()

    def hold_fdatasync(call: FsCall, phase: Phase) -> None:
        spare = call.path.endswith(SPARE_NAME)  # the spare syncs on a thread of its own
        if call.op == "fdatasync" and phase == "before" and not release.is_set() and not spare:
            in_sync.set()
            release.wait(10)

    async with running_service(fs=fs) as service:
        first = await RawConnection.open(socket_of(service))
        second = await RawConnection.open(socket_of(service))
        rid = new_rid()
        n = base_of(service) + 1
        fs.hook = hold_fdatasync
        first.send(append_message(rid, 1))
        await asyncio.get_running_loop().run_in_executor(None, in_sync.wait, 10)
        second.send(append_message(rid, 7))
        status = await second.request({"op": "status"})  # the duplicate has been taken in
        assert status["status"]["last_seq"] == n - 1
        release.set()
        assert await first.recv() == {"id": 1, "seq": n, "duplicate": False}
        assert await second.recv() == {
            "id": 7,
            "seq": n,
            "duplicate": True,
            "response": response_for(rid),
        }
        assert service.journals["main"].last_seq == n
        await first.close()
        await second.close()


async def test_a_duplicate_after_a_restart_gets_the_original_seq_from_the_rebuilt_index(
    running_service: RunningService,
) -> None:
    rids = [new_rid() for _ in range(50)]
    async with running_service() as service, JournalClient(socket_of(service)) as client:
        seqs = [await append_one(client, rid) for rid in rids]
    async with running_service() as service, JournalClient(socket_of(service)) as client:
        before = base_of(service)
        again = await asyncio.gather(
            *(client.append(rid, "test.cmd", command_for(rid)) for rid in rids)
        )
        assert [(r.seq, r.duplicate, r.response) for r in again] == [
            (seq, True, response_for(rid)) for seq, rid in zip(seqs, rids, strict=True)
        ]
        assert (await client.status())["last_seq"] == before  # nothing written


async def test_a_duplicate_and_a_lookup_of_a_large_entry_get_the_original(
    running_service: RunningService,
) -> None:
    async with running_service() as service, JournalClient(socket_of(service)) as client:
        rid = new_rid()
        big = command_for(rid, 100_000)
        n = (await client.append(rid, "big", big, response=b"ok")).seq
        again = await client.append(rid, "big", big)
        assert (again.seq, again.duplicate, again.response) == (n, True, b"ok")
        found = await client.lookup(rid)
        assert found is not None
        assert found.command == big


# -- append_batch ------------------------------------------------------------------------------


def entry(rid: bytes, **extra: Any) -> dict[str, Any]:
    return {
        "request_id": rid,
        "command_type": "test.cmd",
        "command": command_for(rid),
        "response": response_for(rid),
        **extra,
    }


async def test_append_batch_writes_all_its_entries_in_one_write_while_others_append(
    running_service: RunningService,
) -> None:
    async with running_service() as service:
        sock = socket_of(service)
        async with JournalClient(sock) as batcher, JournalClient(sock) as other:
            singles = [new_rid() for _ in range(300)]
            batch = [new_rid() for _ in range(200)]
            others = asyncio.gather(*(append_one(other, rid) for rid in singles))
            results = await batcher.append_batch([entry(rid) for rid in batch])
            await others
        first = results[0].seq
        assert [r.seq for r in results] == list(range(first, first + len(batch)))
        assert not any(r.duplicate for r in results)
        data_dir = service.settings.data_dir
    positions = batch_positions(data_dir)
    start = positions[first]
    assert [positions[first + i] for i in range(len(batch))] == [start + i for i in range(200)]


async def test_append_batch_answers_each_entry_and_duplicates_inside_the_batch(
    running_service: RunningService,
) -> None:
    async with running_service() as service, JournalClient(socket_of(service)) as client:
        old, a, b = new_rid(), new_rid(), new_rid()
        old_seq = await append_one(client, old)
        results = await client.append_batch([entry(a), entry(b), entry(a), entry(old)])
        assert [(r.seq, r.duplicate, r.response) for r in results] == [
            (old_seq + 1, False, None),
            (old_seq + 2, False, None),
            (old_seq + 1, True, response_for(a)),
            (old_seq, True, response_for(old)),
        ]
        assert service.journals["main"].last_seq == old_seq + 2
        assert [e.request_id for e in await client.read(old_seq)] == [old, a, b]


# -- subscriptions -----------------------------------------------------------------------------


async def keep_appending(sock: str, rids: list[bytes], burst: int = 25) -> None:
    async with JournalClient(sock) as client:
        for i in range(0, len(rids), burst):
            await asyncio.gather(*(append_one(client, rid) for rid in rids[i : i + burst]))


async def test_a_subscriber_gets_history_then_live_with_no_gap_or_duplicate_during_appends(
    running_service: RunningService,
) -> None:
    history = [new_rid() for _ in range(300)]
    live = [[new_rid() for _ in range(400)] for _ in range(3)]
    total = len(history) + sum(map(len, live))
    async with running_service() as service:
        sock = socket_of(service)
        base = base_of(service)
        await keep_appending(sock, history, burst=100)
        writers = asyncio.gather(*(keep_appending(sock, rids) for rids in live))
        async with JournalClient(sock) as client:
            got: list[StoredEntry] = []
            async for item in client.subscribe(from_seq=1):
                got.append(item)
                if len(got) == total:
                    break
        await writers
    assert [e.seq for e in got] == list(range(base + 1, base + total + 1))
    assert {e.request_id for e in got} == set(history) | {r for rids in live for r in rids}
    assert all(e.command == command_for(e.request_id) for e in got)


async def test_a_slow_subscriber_holds_back_no_ack_and_still_gets_everything_in_order(
    running_service: RunningService,
) -> None:
    rids = [new_rid() for _ in range(2400)]
    big = 1500  # ~3.6 MB of records: more than the socket buffer plus the write high-water mark
    async with running_service() as service:
        sock = socket_of(service)
        base = base_of(service)
        slow = await RawConnection.open(sock)
        slow.send({"op": "subscribe", "id": 5, "from_seq": 1})
        assert await slow.recv() == {"id": 5, "subscribed": True, "from_seq": 1}
        async with JournalClient(sock) as fast_reader, JournalClient(sock) as writer:
            fast_seen: list[int] = []

            async def follow() -> None:
                async for item in fast_reader.subscribe(from_seq=1):
                    fast_seen.append(item.seq)
                    if len(fast_seen) == len(rids):
                        return

            follower = asyncio.create_task(follow())
            for i in range(0, len(rids), 100):
                await asyncio.gather(
                    *(
                        writer.append(rid, "test.cmd", command_for(rid, big))
                        for rid in rids[i : i + 100]
                    )
                )
            # Every ACK arrived while the slow subscriber had not read a byte of its pushes.
            assert service.server is not None
            stuck = [c for c in service.server._connections if c._write_paused]
            assert len(stuck) == 1
            await follower
        slow_seen: list[int] = []
        while len(slow_seen) < base + len(rids):
            frame = await slow.recv()
            assert frame["id"] == 5, frame
            slow_seen.extend(rec["seq"] for rec in frame["records"])
            await asyncio.sleep(0.001)  # and now it reads slowly
        assert slow_seen == list(range(1, base + len(rids) + 1))  # raw: run markers too
        assert fast_seen == list(range(base + 1, base + len(rids) + 1))
        await slow.close()


async def test_after_unsubscribe_no_record_is_pushed(running_service: RunningService) -> None:
    async with running_service() as service, JournalClient(socket_of(service)) as writer:
        conn = await RawConnection.open(socket_of(service))
        n = base_of(service) + 1
        conn.send({"op": "subscribe", "id": 9, "from_seq": n})
        assert (await conn.recv())["subscribed"] is True
        await append_one(writer, new_rid())
        pushed = await conn.recv()
        assert [r["seq"] for r in pushed["records"]] == [n]
        reply = await conn.request({"op": "unsubscribe", "subscription": 9})
        assert reply["unsubscribed"] == 9
        assert service.journals["main"].fanout.count == 0
        for _ in range(20):
            await append_one(writer, new_rid())
        # The next frame on this connection is the status reply, not a push.
        assert "status" in await conn.request({"op": "status"})
        await conn.close()


async def test_a_client_subscription_ends_with_an_unsubscribe_when_iteration_stops(
    running_service: RunningService,
) -> None:
    async with running_service() as service, JournalClient(socket_of(service)) as client:
        first = min([await append_one(client, new_rid()) for _ in range(5)])
        stream = client.subscribe(from_seq=1)
        assert (await anext(stream)).seq == first
        assert service.journals["main"].fanout.count == 1
        await stream.aclose()
        await client.status()  # the unsubscribe went out before this request
        assert service.journals["main"].fanout.count == 0


# -- set-up and limits -------------------------------------------------------------------------


async def test_a_second_server_on_the_same_data_directory_fails_naming_the_lock_holder(
    running_service: RunningService,
) -> None:
    async with running_service() as service:
        other = Service(service.settings.replace(socket_path=socket_of(service) + "2"))
        with pytest.raises(LockedError, match=rf"locked by pid {os.getpid()}\b") as info:
            await other.start()
        assert info.value.holder_pid == os.getpid()
        assert not os.path.exists(other.settings.socket_path)  # it failed before binding
        async with JournalClient(socket_of(service)) as client:  # the first one is unharmed
            assert await append_one(client, new_rid()) > 0


async def test_a_second_server_process_exits_with_one_clear_line_naming_the_lock_holder(
    tmp_path: Path, running_service: RunningService
) -> None:
    async with running_service() as service:
        second = ServerProcess(tmp_path / "data", socket_of(service) + "2", tmp_path / "second.log")
        second.start()
        assert await second.wait() == 1
        output = second.log_text()
        assert f"locked by pid {os.getpid()}" in output
        assert "Traceback" not in output
        assert '"service.start_refused"' in output


async def test_a_damaged_cursor_file_refuses_the_start_with_one_clear_line(
    tmp_path: Path, running_service: RunningService
) -> None:
    async with running_service() as service:
        data_dir = service.settings.data_dir
    cursor_file = Path(data_dir) / "cursors.ackc"
    cursor_file.write_bytes(b"not a cursor file at all")
    server = ServerProcess(Path(data_dir), str(tmp_path / "s.sock"), tmp_path / "server.log")
    server.start()
    assert await server.wait() == 1
    output = server.log_text()
    assert "Traceback" not in output
    assert '"service.start_refused"' in output
    assert "cursors.ackc" in output


async def test_a_stale_socket_file_is_removed_at_start(running_service: RunningService) -> None:
    async with running_service() as service:
        sock = socket_of(service)
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(sock)  # a socket file nobody listens on, as a killed server leaves behind
    dead.close()
    assert stat.S_ISSOCK(os.lstat(sock).st_mode)
    async with running_service(), JournalClient(sock) as client:
        assert await append_one(client, new_rid()) > 0


async def test_a_socket_a_live_server_answers_on_is_never_removed(
    running_service: RunningService, tmp_path: Path
) -> None:
    async with running_service() as service:
        sock = socket_of(service)
        inode = os.lstat(sock).st_ino
        intruder = Service(service.settings.replace(data_dir=str(tmp_path / "other")))
        with pytest.raises(SocketInUseError, match="another server is listening"):
            await intruder.start()
        assert os.lstat(sock).st_ino == inode
        async with JournalClient(sock) as client:
            assert await append_one(client, new_rid()) > 0


async def test_a_file_at_the_socket_path_that_is_not_a_socket_is_never_removed(
    running_service: RunningService,
) -> None:
    async with running_service() as service:
        sock = socket_of(service)
    Path(sock).write_text("precious")
    with pytest.raises(SocketInUseError, match="is not a socket"):
        async with running_service():
            pass
    assert Path(sock).read_text() == "precious"


@pytest.mark.parametrize("mode", ["0660", "0600", "0666"])
async def test_the_socket_file_gets_the_mode_from_settings(
    running_service: RunningService, mode: str
) -> None:
    async with running_service(socket_mode=mode) as service:
        assert stat.S_IMODE(os.lstat(socket_of(service)).st_mode) == int(mode, 8)


async def test_a_connection_over_max_connections_is_refused_with_busy(
    running_service: RunningService,
) -> None:
    async with running_service(max_connections=2) as service:
        sock = socket_of(service)
        first = await RawConnection.open(sock)
        second = await RawConnection.open(sock)
        extra = await RawConnection.open(sock, hello=False)
        refused = await extra.recv()
        assert refused["id"] is None
        assert refused["error"]["code"] == "busy"
        assert "max_connections=2" in refused["error"]["message"]
        assert await extra.reader.read() == b""  # and closed
        await extra.close()
        assert "status" in await second.request({"op": "status"})
        await first.close()
        while service.server is not None and service.server.connection_count > 1:
            await asyncio.sleep(0.01)
        third = await RawConnection.open(sock)  # a freed slot is usable again
        assert "status" in await third.request({"op": "status"})
        await second.close()
        await third.close()


async def test_a_client_that_never_reads_is_cut_off_after_write_timeout_without_delaying_acks(
    running_service: RunningService,
) -> None:
    async with running_service(write_timeout=1.0) as service:
        sock = socket_of(service)
        assert service.server is not None
        async with JournalClient(sock) as writer:
            for _ in range(4):  # 40 x 100 KB of history
                await asyncio.gather(
                    *(
                        writer.append(rid, "big", command_for(rid, 100_000))
                        for rid in (new_rid() for _ in range(10))
                    )
                )
            deaf = await RawConnection.open(sock)
            deaf.send(*({"op": "read", "id": n, "from_seq": 1, "limit": 40} for n in range(40)))
            while not any(c._write_paused for c in service.server._connections):
                await asyncio.sleep(0.01)
            base = base_of(service)
            acked = [await append_one(writer, new_rid()) for _ in range(50)]
            assert acked == list(range(base + 1, base + 51))
            # All of those ACKs came back while the deaf client was connected and stuck.
            assert service.server.connection_count == 2
            assert any(c._write_paused for c in service.server._connections)
            while service.server.connection_count > 1:
                await asyncio.sleep(0.02)
            with pytest.raises(ConnectionError):
                while True:  # what was buffered, then the reset
                    await deaf.recv()
            await deaf.close()


async def test_a_lookup_waiting_for_an_in_flight_entry_leaves_the_in_flight_count_balanced(
    running_service: RunningService,
) -> None:
    async with running_service() as service:
        conn = await RawConnection.open(socket_of(service))
        rids = [new_rid() for _ in range(20)]
        conn.send(
            *(append_message(rid, n) for n, rid in enumerate(rids)),
            *({"op": "lookup", "id": 100 + n, "request_id": rid} for n, rid in enumerate(rids)),
        )
        replies = {}
        while len(replies) < 40:
            reply = await conn.recv()
            replies[reply["id"]] = reply
        for n, rid in enumerate(rids):
            assert replies[100 + n]["record"]["seq"] == replies[n]["seq"]
            assert replies[100 + n]["record"]["data"][1] == rid
        assert service.server is not None
        [server_side] = service.server._connections
        assert server_side.inflight == 0
        await conn.close()


# -- graceful shutdown -------------------------------------------------------------------------


async def test_a_graceful_stop_under_load_answers_every_request_and_loses_no_ack(
    running_service: RunningService,
) -> None:
    async with running_service() as service:
        settings = service.settings
    service = Service(settings)
    run = asyncio.create_task(service.run())
    await service.ready.wait()
    sock = socket_of(service)
    clients = [await JournalClient.connect(sock, reconnect=False) for _ in range(8)]
    outcomes: dict[bytes, AppendResult | BaseException] = {}
    refused = asyncio.Event()

    async def one(client: JournalClient, rid: bytes, window: asyncio.Semaphore) -> None:
        try:
            outcomes[rid] = await client.append(rid, "t", command_for(rid))
        except (ShuttingDownError, ClientClosedError) as exc:
            outcomes[rid] = exc
            refused.set()
        finally:
            window.release()

    async def producer(client: JournalClient) -> None:
        # Keeps 128 appends in flight, like an engine under load, until told to stop.
        window = asyncio.Semaphore(128)
        tasks = []
        while True:
            await window.acquire()
            if refused.is_set():
                break
            tasks.append(asyncio.create_task(one(client, new_rid(), window)))
        await asyncio.gather(*tasks)

    producers = asyncio.gather(*(producer(c) for c in clients))
    while len(outcomes) < 3000:
        await asyncio.sleep(0.005)
    service.request_stop()
    assert await run == EXIT_OK
    await producers
    kinds = collections.Counter(type(o).__name__ for o in outcomes.values())
    assert set(kinds) == {"AppendResult", "ShuttingDownError"}, kinds  # nothing unanswered
    acked = {rid: o.seq for rid, o in outcomes.items() if isinstance(o, AppendResult)}
    for client in clients:
        await client.close()
    async with running_service() as service:
        log = await read_all(service)
    assert {e.request_id: e.seq for e in log} == acked  # every ACK kept, nothing unanswered kept
