"""The standby (ackwal follow) against a real nats-server: identical WAL, resume, divergence."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

from tests.replication.helpers import (
    append_n,
    chain_of,
    publish_raw,
    raw_log,
    repl_settings,
    serve_standby,
    status_of,
    wait_until,
)
from tests.replication.natsserver import NatsServer
from tests.service.harness import RawConnection, ServerProcess, serve, short_socket_path
from wal.format import encode_records


async def test_after_many_appends_the_standby_holds_the_same_chain_head(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    total = 100_000
    with short_socket_path() as psock, short_socket_path() as ssock:
        primary = repl_settings(tmp_path / "p", psock, nats_server.url, replication_mode="async")
        standby = repl_settings(tmp_path / "s", ssock, nats_server.url)
        started = time.monotonic()
        async with serve(primary) as psvc:
            async with serve_standby(standby) as ssvc:
                await append_n(psvc.journals["main"], total, batch=1000)
                pj, sj = psvc.journals["main"], ssvc.journals["main"]
                await wait_until(
                    lambda: sj.wal.last_seq == pj.wal.last_seq, 120, "the standby to catch up"
                )
                assert sj.wal.chain_head == pj.wal.chain_head
                status = (await status_of(ssock))["replication"]
                assert status["role"] == "standby" and status["diverged"] is None
                # the standby serves reads and refuses appends
                conn = await RawConnection.open(ssock)
                read = await conn.request({"op": "read", "from_seq": 2, "limit": 3})
                assert [r["seq"] for r in read["records"]] == [2, 3, 4]
                # lookups know entries that arrived after the standby started
                newest = pj.read(pj.wal.last_seq - 1)[-1]
                found = await conn.request({"op": "lookup", "request_id": newest.request_id})
                assert found["record"]["seq"] == newest.seq
                refused = await conn.request(
                    {"op": "append", "request_id": os.urandom(16), "command_type": "t",
                     "command": b"x"}
                )  # fmt: skip
                assert refused["error"]["code"] == "read_only"
                await conn.close()
            elapsed = time.monotonic() - started
        print(f"{total} appends replicated in {elapsed:.1f}s")
        assert raw_log(tmp_path / "s") == raw_log(tmp_path / "p")[: chain_of(tmp_path / "s")[0]]


class FollowProcess(ServerProcess):
    """``ackwal follow`` as a child process."""

    def argv(self) -> list[str]:
        argv = super().argv()
        argv[1] = "follow"
        return argv


async def test_a_standby_killed_mid_stream_resumes_from_its_own_wal_end(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    with short_socket_path() as psock, short_socket_path() as ssock:
        primary = repl_settings(tmp_path / "p", psock, nats_server.url, replication_mode="async")
        follower = FollowProcess(
            tmp_path / "s",
            ssock,
            tmp_path / "follow.log",
            f"replication_nats_url={nats_server.url}",
            "replication_retry_interval=0.1",
        )
        try:
            async with serve(primary) as psvc:
                journal = psvc.journals["main"]
                await follower.start_ready()
                appending = asyncio.ensure_future(append_n(journal, 40_000, batch=200))
                # kill -9 while records are flowing in
                while (await status_of(ssock))["last_seq"] < 5_000:  # type: ignore[operator]
                    await asyncio.sleep(0.05)
                await follower.kill9()
                killed_at = chain_of(tmp_path / "s")[0]
                await appending
                await follower.start_ready()
                last = journal.wal.last_seq
                while (await status_of(ssock))["last_seq"] != last:
                    await asyncio.sleep(0.05)
                assert f'"from_seq": {killed_at + 1}' in follower.log_text()
                follower.signal(signal.SIGTERM)
                assert await follower.wait() == 0
                assert chain_of(tmp_path / "s") == (last, journal.wal.chain_head)
        finally:
            follower.stop_quietly()


async def test_an_injected_divergence_is_caught_at_its_seq_and_nothing_of_it_is_written(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    with short_socket_path() as psock, short_socket_path() as ssock:
        primary = repl_settings(tmp_path / "p", psock, nats_server.url, replication_mode="async")
        async with serve(primary) as psvc:
            await append_n(psvc.journals["main"], 500, batch=50)
        last, head = chain_of(tmp_path / "p")
        standby = repl_settings(tmp_path / "s", ssock, nats_server.url)
        async with serve_standby(standby) as ssvc:
            sj = ssvc.journals["main"]
            await wait_until(lambda: sj.wal.last_seq == last, 30, "the standby to catch up")
            # a self-consistent record for the next seq that does not link to the chain head
            forged, _ = encode_records([b"forged entry"], last + 1, head ^ 1)
            await publish_raw(nats_server.url, last + 1, bytes(forged))
            follower = ssvc.followers[0]
            await wait_until(lambda: follower.diverged is not None, 30, "the divergence")
            assert follower.diverged_seq == last + 1
            assert "chain break" in (follower.diverged or "")
            assert sj.wal.last_seq == last  # nothing of the bad record was written
            assert ssvc.readiness() == (
                False,
                "standby diverged from the stream: main",
            )
            status = (await status_of(ssock))["replication"]
            assert status["diverged_seq"] == last + 1  # type: ignore[index]
        # a restart stops at the same place: the standby never skips a bad record
        async with serve_standby(standby) as ssvc:
            follower = ssvc.followers[0]
            await wait_until(lambda: follower.diverged is not None, 30, "the divergence again")
            assert follower.diverged_seq == last + 1
        assert chain_of(tmp_path / "s") == (last, head)


async def test_a_standby_follows_every_journal_of_the_service(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    with short_socket_path() as psock, short_socket_path() as ssock:
        primary = repl_settings(
            tmp_path / "p",
            psock,
            nats_server.url,
            replication_mode="async",
            journals={"orders": str(tmp_path / "p-orders")},
        )
        standby = repl_settings(
            tmp_path / "s", ssock, nats_server.url, journals={"orders": str(tmp_path / "s-orders")}
        )
        async with serve(primary) as psvc, serve_standby(standby) as ssvc:
            await append_n(psvc.journals["main"], 300, batch=30)
            await append_n(psvc.journals["orders"], 700, batch=70)
            for name in ("main", "orders"):
                pj, sj = psvc.journals[name], ssvc.journals[name]
                await wait_until(lambda: sj.wal.last_seq == pj.wal.last_seq, 30, name)  # noqa: B023
                assert sj.wal.chain_head == pj.wal.chain_head
            assert [f.subject for f in ssvc.followers] == ["ackwal.main", "ackwal.orders"]
